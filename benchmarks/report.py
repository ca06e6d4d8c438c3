"""A load run's report: throughput, latency percentiles, errors and server batch sizes, as a table or JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.load import LoadResult, Progress
from benchmarks.scrape import BatchSizes

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Latency:
    """Milliseconds over the successful calls of the measured window."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float


@dataclass(frozen=True)
class Report:
    target: str
    rpc: str
    items_per_request: int
    concurrency: int
    processes: int
    warmup_s: float
    duration_s: float
    requests: int  # successful calls completed in the window
    requests_per_s: float
    items_per_s: float
    latency_ms: Latency | None  # None when no call succeeded
    errors: dict[str, int]  # gRPC status name -> calls
    batch_sizes: dict[str, BatchSizes] | None  # graph -> batches run; None without --metrics-url

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for graph, sizes in (self.batch_sizes or {}).items():
            data["batch_sizes"][graph]["mean"] = round(sizes.mean, 2)
        return data


def summarize(
    result: LoadResult,
    *,
    target: str,
    rpc: str,
    items: int,
    concurrency: int,
    processes: int,
    warmup: float,
    batch_sizes: dict[str, BatchSizes] | None = None,
) -> Report:
    latency = None
    if result.requests:
        ms = result.latencies * 1e3
        p50, p95, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
        latency = Latency(p50, p95, p99, float(ms.max()), float(ms.mean()))
    return Report(
        target=target,
        rpc=rpc,
        items_per_request=items,
        concurrency=concurrency,
        processes=min(processes, concurrency),
        warmup_s=warmup,
        duration_s=result.seconds,
        requests=result.requests,
        requests_per_s=result.requests / result.seconds,
        items_per_s=result.requests * items / result.seconds,
        latency_ms=latency,
        errors=dict(sorted(result.errors.items())),
        batch_sizes=batch_sizes,
    )


def table(report: Report) -> str:
    """The report as aligned text, for people."""
    lat = report.latency_ms
    rows = [
        ("target", report.target),
        ("call", f"{report.rpc}, {report.items_per_request} item(s) per request"),
        ("load", f"{report.concurrency} concurrent callers in {report.processes} process(es)"),
        ("window", f"{report.duration_s:g} s after {report.warmup_s:g} s of warmup"),
        ("requests", f"{report.requests} ok, {report.requests_per_s:,.0f}/s"),
        ("items", f"{report.items_per_s:,.0f}/s"),
    ]
    if lat:
        rows.append(
            ("latency ms", f"p50 {lat.p50:.2f}  p95 {lat.p95:.2f}  p99 {lat.p99:.2f}  max {lat.max:.2f}")
        )
    rows.append(("errors", ", ".join(f"{code} {n}" for code, n in report.errors.items()) or "none"))
    if report.batch_sizes is not None:
        for graph, sizes in sorted(report.batch_sizes.items()):
            spread = "  ".join(f"<={le}: {n}" for le, n in sizes.buckets.items())
            rows.append(
                (f"{graph} batches", f"{sizes.batches} of {sizes.mean:.1f} items on average; {spread}")
            )
        if not report.batch_sizes:
            rows.append(("batches", "none ran in the window"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def progress_line(progress: Progress, previous: Progress | None) -> str:
    """One line for a terminal: elapsed time, phase, completed calls and the rate since the last line."""
    rate = 0.0
    if previous is not None and progress.elapsed > previous.elapsed:
        rate = (progress.completed - previous.completed) / (progress.elapsed - previous.elapsed)
    phase = "measuring" if progress.measuring else "warming up"
    return f"{progress.elapsed:6.1f} s  {phase:<10}  {progress.completed:>9,} calls  {rate:>9,.0f}/s"
