"""The server's vae_batch_size_items histogram, read from its /metrics endpoint, and its change over a run."""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

METRIC = "vae_batch_size_items"


@dataclass(frozen=True)
class Histogram:
    """One graph's cumulative histogram as scraped: bucket upper bounds and counts, and the sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float  # the _sum series: items over all batches


@dataclass(frozen=True)
class BatchSizes:
    """Batches executed for one graph between two scrapes."""

    batches: int
    items: int
    # "1", "2", "4", ... "+Inf": batches whose size is above the previous bound and at most this one.
    buckets: dict[str, int]

    @property
    def mean(self) -> float:
        return self.items / self.batches if self.batches else 0.0


def read(url: str, timeout: float = 5.0) -> dict[str, Histogram]:
    """graph label -> its vae_batch_size_items histogram, from a Prometheus text endpoint."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return parse(text)


def parse(text: str) -> dict[str, Histogram]:
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            graph = sample.labels.get("graph", "")
            if sample.name == METRIC + "_bucket":
                buckets.setdefault(graph, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name == METRIC + "_sum":
                sums[graph] = sample.value
    histograms = {}
    for graph, pairs in buckets.items():
        pairs.sort()
        histograms[graph] = Histogram(
            tuple(bound for bound, _ in pairs), tuple(count for _, count in pairs), sums.get(graph, 0.0)
        )
    return histograms


def difference(before: dict[str, Histogram], after: dict[str, Histogram]) -> dict[str, BatchSizes]:
    """What ran between the two scrapes, for each graph that ran at least one batch."""
    changes = {}
    for graph, end in after.items():
        start = before.get(graph)
        cumulative = [c - (start.cumulative[i] if start else 0.0) for i, c in enumerate(end.cumulative)]
        if not cumulative or cumulative[-1] <= 0:
            continue
        per_bucket = [round(c - p) for c, p in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]
        labels = ["+Inf" if math.isinf(bound) else f"{bound:g}" for bound in end.bounds]
        changes[graph] = BatchSizes(
            batches=round(cumulative[-1]),
            items=round(end.total - (start.total if start else 0.0)),
            buckets={label: n for label, n in zip(labels, per_bucket, strict=True) if n},
        )
    return changes
