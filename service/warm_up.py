"""Warm-up: the batch sizes a batcher times when a version loads, and the knee read from their costs."""

from __future__ import annotations

from collections.abc import Mapping

# A batch size whose cost per item is within this factor of the cheapest is past the knee. 1.25
# stopped the encoder at batches of 4, where a busy core still gained from 16 (docs/benchmarks.md).
KNEE = 1.05


def bucket_sizes(max_batch_items: int) -> list[int]:
    """Powers of two up to max_batch_items, and max_batch_items itself: the sizes warmed at start."""
    sizes = [1 << i for i in range(max_batch_items.bit_length()) if 1 << i <= max_batch_items]
    return sizes if sizes[-1] == max_batch_items else [*sizes, max_batch_items]


def knee(per_item: Mapping[int, float]) -> int:
    """The smallest batch size whose cost per item is within KNEE of the cheapest.

    Past it a bigger batch no longer costs less per item, so gathering gains nothing and only stalls
    a pipeline (Reconstruct's encoder waiting for callers busy in the decoder).
    """
    cheapest = min(per_item.values())
    return min(size for size, cost in per_item.items() if cost <= KNEE * cheapest)
