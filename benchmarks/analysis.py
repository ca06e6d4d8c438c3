"""Medians over rounds, the in-process ceilings and the target ratios, from the suite's raw records."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from benchmarks.scenarios import GRAPHS_OF, INPROCESS_BATCHES, MODES, SCENARIOS, SYSTEMS

MINIMAL = "minimal micro-batcher"
Ceiling = dict[str, dict[int, dict[str, float]]]  # graph -> batch -> items_per_s, ms_per_batch
Medians = dict[str, dict[str, dict[str, Any]]]  # scenario -> system -> median figures
Row = dict[str, Any]  # a target: what, value, goal (">= 2"), met (None without a goal or a value)


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the rounds of every figure, the in-process ceilings and the target ratios.

    "load" holds the unpinned runs (and those of results.json files from before the pinned mode),
    "load_pinned" the pinned ones.
    """
    by_mode = {
        mode: _load_medians([r for r in results["load"] if r.get("mode", "unpinned") == mode])
        for mode in MODES
    }
    ceiling = inprocess_medians(results["inprocess"])
    cold = {
        system: statistics.median(r["seconds"] for r in results["cold_start"] if r["system"] == system)
        for system in {r["system"] for r in results["cold_start"]}
    }
    return {
        "load": by_mode["unpinned"],
        "load_pinned": by_mode["pinned"],
        "inprocess": ceiling,
        "cold_start_s": cold,
        "targets": _targets(by_mode["unpinned"], by_mode["pinned"], ceiling, cold),
    }


def _load_medians(records: list[dict[str, Any]]) -> Medians:
    medians: Medians = {}
    for scenario in SCENARIOS:
        for system in SYSTEMS:
            runs = [r for r in records if r["scenario"] == scenario.key and r["system"] == system]
            ok = [r for r in runs if "failed" not in r]
            if ok:
                medians.setdefault(scenario.key, {})[system] = _median_run(ok) | {
                    "failed_runs": len(runs) - len(ok)
                }
    return medians


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    reports = [r["report"] for r in runs]
    ok = [r for r in reports if r["latency_ms"]]
    median = {
        "runs": len(runs),
        "requests_per_s": statistics.median(r["requests_per_s"] for r in reports),
        "items_per_s": statistics.median(r["items_per_s"] for r in reports),
        "errors": sum(sum(r["errors"].values()) for r in reports),
    }
    for key in ("p50", "p95", "p99", "max"):
        median[f"{key}_ms"] = statistics.median(r["latency_ms"][key] for r in ok) if ok else None
    batches = [r["batch_sizes"] for r in reports if r["batch_sizes"]]
    if batches:
        median["mean_batch"] = {
            graph: statistics.median(b[graph]["mean"] for b in batches if graph in b)
            for graph in sorted({graph for b in batches for graph in b})
        }
    # Absent from results.json files written before the suite measured it.
    cpu = [r["server_cpu_ms_per_call"] for r in runs if r.get("server_cpu_ms_per_call") is not None]
    median["server_cpu_ms_per_call"] = statistics.median(cpu) if cpu else None
    curves = [r["latency_quantiles_ms"] for r in runs if r["latency_quantiles_ms"]]
    median["latency_quantiles_ms"] = np.median(np.array(curves), axis=0).tolist() if curves else None
    return median


def inprocess_medians(points: list[dict[str, Any]]) -> Ceiling:
    ceiling: Ceiling = {}
    for graph in ("encoder", "decoder"):
        for batch in INPROCESS_BATCHES:
            runs = [p for p in points if p["graph"] == graph and p["batch"] == batch]
            if runs:
                ceiling.setdefault(graph, {})[batch] = {
                    "items_per_s": statistics.median(p["items_per_s"] for p in runs),
                    "ms_per_batch": statistics.median(p["ms_per_batch"] for p in runs),
                }
    return ceiling


def inprocess_items_per_s(ceiling: Ceiling, rpc: str, batch: int) -> float | None:
    """What calling onnxruntime directly gives for `rpc` at `batch` items: reconstruct runs both graphs."""
    try:
        ms = sum(ceiling[graph][batch]["ms_per_batch"] for graph in GRAPHS_OF[rpc])
    except KeyError:
        return None
    return batch / ms * 1e3


def _targets(medians: Medians, pinned: Medians, ceiling: Ceiling, cold: dict[str, float]) -> list[Row]:
    """Each target of docs/benchmarks.md: what, the measured value, the goal and whether it is met."""
    rows: list[Row] = []

    def row(what: str, value: float | None, goal: str = "") -> None:
        met = None
        if goal and value is not None:
            sign, bound = goal.split()
            met = value >= float(bound) if sign == ">=" else value <= float(bound)
        rows.append({"what": what, "value": value, "goal": goal, "met": met})

    def ours_over(scenario: str, system: str, key: str, among: Medians = medians) -> float | None:
        ours, theirs = among.get(scenario, {}).get("service"), among.get(scenario, {}).get(system)
        if not ours or not theirs or not ours.get(key) or not theirs.get(key):
            return None
        return float(ours[key] / theirs[key])

    for key in ("decode-c16", "decode-c64", "encode-c64"):
        row(f"{key}: req/s, service / Triton", ours_over(key, "triton", "requests_per_s"), ">= 2")
        row(f"{key}: p99, service / Triton", ours_over(key, "triton", "p99_ms"), "<= 0.5")
        row(f"{key}: req/s, service / echo", ours_over(key, "echo", "requests_per_s"), ">= 0.9")
        row(
            f"{key}: req/s, service / batching off", ours_over(key, "service, batching off", "requests_per_s")
        )
        row(f"{key}: req/s, service / minimal micro-batcher", ours_over(key, MINIMAL, "requests_per_s"))
        row(
            f"{key}, pinned: req/s on one server core, service / minimal micro-batcher",
            ours_over(key, MINIMAL, "requests_per_s", pinned),
        )
    row("decode-c1: p50 ms, service", medians.get("decode-c1", {}).get("service", {}).get("p50_ms"), "<= 1.5")
    for scenario in SCENARIOS:
        if scenario.items > 1:
            ours = medians.get(scenario.key, {}).get("service", {}).get("items_per_s")
            best = inprocess_items_per_s(ceiling, scenario.rpc, scenario.items)
            what = f"{scenario.key}: items/s, service / in-process at batch {scenario.items}"
            row(what, ours / best if ours and best else None, ">= 0.8")
    for system, seconds in sorted(cold.items()):
        row(f"cold start s, {system}", seconds, "<= 2" if system == "service" else "")
    return rows
