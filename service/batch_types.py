"""What the batcher and its users share: its items, errors, run_batch and reporting interfaces, results.

The errors know nothing of gRPC; service/errors.py maps each to a status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from repository.errors import VaeError


class BatchError(VaeError):
    """A request the batcher could not run; service/errors.py maps each kind to a gRPC status."""


class QueueFull(BatchError):
    """Admitting the request would overflow the queue; retry with backoff."""


class BatcherClosed(BatchError):
    """The batcher is shutting down (server stop or model reload) and takes no new requests."""


class Expired(BatchError):
    """The request's deadline passed while it was queued; its items never ran."""


class BatchFailed(BatchError):
    """run_batch raised (the log has the traceback) or returned outputs that do not match the items."""


@dataclass(frozen=True, slots=True)
class Labelled:
    """A conditional model's items: their array and their class labels (int64 [n]), one per item.

    The batcher slices and joins them together, so every item keeps its own label in any batch.
    """

    values: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: slice) -> Labelled:
        return Labelled(self.values[index], self.labels[index])


# A request's items, first axis the items: a bare array, or Labelled for a conditional model.
Items = np.ndarray | Labelled


def labelled(values: np.ndarray, labels: np.ndarray | None) -> Items:
    """The items of a request: bare for an unconditional model (labels None), else Labelled."""
    return values if labels is None else Labelled(values, labels)


def values_of(items: Items) -> np.ndarray:
    """The items' array, without a conditional model's labels."""
    return items.values if isinstance(items, Labelled) else items


def item_bytes(items: Items) -> int:
    """The bytes a request's items hold (a conditional model's labels included)."""
    return items.values.nbytes + items.labels.nbytes if isinstance(items, Labelled) else items.nbytes


def join(parts: Sequence[Items]) -> Items:
    """One batch from its requests' slices, in order; a single slice is passed on uncopied."""
    head = parts[0]
    if len(parts) == 1:
        return head
    if isinstance(head, Labelled):
        # A batcher serves one graph of one model: its items are all Labelled or all bare arrays.
        pieces = cast("Sequence[Labelled]", parts)
        return Labelled(
            np.concatenate([p.values for p in pieces]), np.concatenate([p.labels for p in pieces])
        )
    return np.concatenate(cast("Sequence[np.ndarray]", parts))


RunBatch = Callable[[Items], Sequence[np.ndarray]]
# What the worker thread hands back: (outputs, seconds, start time) or the exception run_batch raised.
Outcome = tuple[Sequence[np.ndarray], float, float] | Exception
# A traced request's part in a batch: (its trace, when it was admitted, its items in the batch,
# whether its first items are among them).
TracedSlice = tuple[Any, float, int, bool]


class BatchObserver(Protocol):
    """What the batcher reports; service/metrics.py turns it into Prometheus series."""

    def queued(self, items: int) -> None: ...  # items joined (> 0) or left (< 0) the queue
    def batch_ran(self, items: int, seconds: float) -> None: ...
    def request_waited(self, seconds: float) -> None: ...
    def request_expired(self) -> None: ...


class ExpiryGroup(Protocol):
    """The requests of one call (service/calls.py's Call): their expiries count once between them."""

    def first_expiry(self) -> bool: ...


class BatchTracer(Protocol):
    """Where executed batches go when tracing is on (service/tracing.py); perf_counter times."""

    def batch_ran(
        self, batcher: str, served: Sequence[TracedSlice], items: int, started: float, seconds: float
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Result:
    """A request's outputs (first axis: its items) and where its time went."""

    outputs: tuple[np.ndarray, ...]
    queue_seconds: float
    compute_seconds: float
