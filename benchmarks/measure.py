"""One measured run of one scenario against one system: load, latency curve, batch sizes, server CPU."""

from __future__ import annotations

import sys
from collections.abc import Set
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import load, report, scrape, systems
from benchmarks.scenarios import QUANTILES, Scenario


@dataclass(frozen=True)
class RunLength:
    duration: float  # measured seconds
    warmup: float  # unmeasured seconds before
    processes: int  # client processes


def measure_or_fail(
    server: systems.Server,
    scenario: Scenario,
    workload: load.Workload,
    length: RunLength,
    client_cpus: Set[int] | None = None,
) -> dict[str, Any]:
    """One run; a system that broke down is recorded as failed (with its log's tail), not the suite."""
    failure = None
    if server.process.poll() is not None:
        failure = f"{server.name} exited with {server.process.returncode}"
    else:
        try:
            return measure(server, scenario, workload, length, client_cpus)
        except RuntimeError as exc:
            failure = str(exc)
    return {"scenario": scenario.key, "failed": failure, "log_tail": systems.tail(server.log)}


def measure(
    server: systems.Server,
    scenario: Scenario,
    workload: load.Workload,
    length: RunLength,
    client_cpus: Set[int] | None = None,
) -> dict[str, Any]:
    """Drive `server` (its client processes on `client_cpus` when given) and summarize the window."""
    scrapes: dict[str, dict[str, scrape.Histogram]] = {}
    cpu: dict[str, float] = {}
    metrics_url = server.metrics_url

    def on_window(edge: str) -> None:
        # CPU is read inside the scrapes, so that answering them is not counted as serving calls.
        if edge == "end":
            cpu[edge] = server.cpu_seconds()
        if metrics_url:
            scrapes[edge] = scrape.read(metrics_url)
        if edge == "start":
            cpu[edge] = server.cpu_seconds()

    result = load.run(
        server.target,
        workload,
        concurrency=scenario.concurrency,
        duration=length.duration,
        warmup=length.warmup,
        processes=length.processes,
        on_window=on_window,
        cpus=client_cpus,
    )
    batch_sizes = scrape.difference(scrapes["start"], scrapes["end"]) if scrapes else None
    summary = report.summarize(
        result,
        target=server.target,
        rpc=scenario.rpc,
        items=scenario.items,
        concurrency=scenario.concurrency,
        processes=length.processes,
        warmup=length.warmup,
        batch_sizes=batch_sizes,
    )
    curve = np.percentile(result.latencies * 1e3, QUANTILES).tolist() if result.requests else None
    # Every call that completed in the window cost the server CPU, failed ones too.
    calls = result.requests + sum(result.errors.values())
    server_cpu = (cpu["end"] - cpu["start"]) * 1e3 / calls if calls else None
    return {
        "scenario": scenario.key,
        "report": summary.to_json(),
        "latency_quantiles_ms": curve,
        "server_cpu_ms_per_call": server_cpu,
    }


def say(record: dict[str, Any], system: str, mode: str) -> None:
    """One line on stderr per run, so a long suite shows where it is."""
    where = f"{record['scenario']:<15} {mode:<9} {system:<22}"
    if "failed" in record:
        print(f"{where} FAILED: {record['failed']}", file=sys.stderr)
        return
    rep = record["report"]
    p99 = rep["latency_ms"]["p99"] if rep["latency_ms"] else float("nan")
    line = f"{where} {rep['requests_per_s']:>9,.0f} req/s  p99 {p99:8.2f} ms"
    cpu = record["server_cpu_ms_per_call"]
    line += f"  server CPU {cpu:.3f} ms/call" if cpu is not None else ""
    print(line + (f"  errors {rep['errors']}" if rep["errors"] else ""), file=sys.stderr)
