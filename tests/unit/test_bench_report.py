"""The load report's arithmetic and the batch-size histogram's difference between two scrapes."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks import scrape
from benchmarks.load import LoadResult
from benchmarks.report import summarize, table


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_difference_counts_only_the_batches_between_the_scrapes() -> None:
    registry = CollectorRegistry()
    sizes = Histogram("vae_batch_size_items", "", ["graph"], buckets=(1, 2, 4, 8), registry=registry)
    sizes.labels("decoder").observe(1)  # before the window
    sizes.labels("encoder").observe(3)
    before = scrape.parse(exposition(registry))
    for size in (1, 2, 3, 4, 7, 100):
        sizes.labels("decoder").observe(size)
    after = scrape.parse(exposition(registry))

    change = scrape.difference(before, after)

    assert set(change) == {"decoder"}  # the encoder ran nothing in between
    decoder = change["decoder"]
    assert decoder.batches == 6
    assert decoder.items == 117
    assert decoder.buckets == {"1": 1, "2": 1, "4": 2, "8": 1, "+Inf": 1}
    assert decoder.mean == pytest.approx(117 / 6)


def test_difference_from_nothing_counts_everything() -> None:
    registry = CollectorRegistry()
    Histogram("vae_batch_size_items", "", ["graph"], buckets=(1, 2), registry=registry).labels(
        "encoder"
    ).observe(2)
    change = scrape.difference({}, scrape.parse(exposition(registry)))
    assert change["encoder"].buckets == {"2": 1}


def test_other_metrics_are_ignored() -> None:
    registry = CollectorRegistry()
    Histogram("vae_request_duration_seconds", "", ["method"], registry=registry).labels("Decode").observe(0.1)
    assert scrape.parse(exposition(registry)) == {}


def test_summary_of_a_window() -> None:
    latencies = np.arange(1, 101, dtype=np.float64) / 1000  # 1 .. 100 ms
    result = LoadResult(seconds=2.0, latencies=latencies, errors={"UNAVAILABLE": 3})

    report = summarize(result, target="t", rpc="sample", items=8, concurrency=4, processes=8, warmup=1.0)

    assert report.requests == 100
    assert report.requests_per_s == 50
    assert report.items_per_s == 400
    assert report.processes == 4  # never more processes than callers
    assert report.latency_ms is not None
    assert report.latency_ms.p50 == pytest.approx(50.5)
    assert report.latency_ms.p99 == pytest.approx(99.01)
    assert report.latency_ms.max == pytest.approx(100)
    assert report.errors == {"UNAVAILABLE": 3}
    assert "UNAVAILABLE 3" in table(report)


def test_a_window_without_successes_has_no_latency() -> None:
    result = LoadResult(seconds=1.0, latencies=np.empty(0), errors={"UNAVAILABLE": 5})
    report = summarize(result, target="t", rpc="decode", items=1, concurrency=1, processes=1, warmup=0.0)
    assert report.latency_ms is None
    assert report.requests_per_s == 0
    assert report.to_json()["latency_ms"] is None
    assert "latency" not in table(report)
