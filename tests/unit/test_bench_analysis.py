"""The suite's medians over rounds, in-process ceilings and target ratios, from synthetic raw records."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.analysis import inprocess_items_per_s, summarize


def run(
    scenario: str,
    system: str,
    rps: float,
    p99: float,
    items: int = 1,
    cpu: float | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    latency = {"p50": p99 / 4, "p95": p99 / 2, "p99": p99, "max": p99 * 2, "mean": p99 / 4}
    report = {
        "requests_per_s": rps,
        "items_per_s": rps * items,
        "latency_ms": latency,
        "errors": {},
        "batch_sizes": None,
    }
    record = {
        "scenario": scenario,
        "system": system,
        "report": report,
        "latency_quantiles_ms": [1.0, 2.0],
        "server_cpu_ms_per_call": cpu,
    }
    # Records written before the pinned mode existed have no mode: they were unpinned.
    return record if mode is None else record | {"mode": mode}


def point(graph: str, batch: int, ms: float) -> dict[str, Any]:
    return {"graph": graph, "batch": batch, "items_per_s": batch / ms * 1e3, "ms_per_batch": ms}


def results() -> dict[str, list[dict[str, Any]]]:
    load = []
    # Three rounds; the middle value is the median whatever the order.
    for rps, p99, cpu in ((3000, 10, 0.4), (1000, 90, 0.6), (2000, 20, 0.5)):
        load.append(run("decode-c64", "service", rps, p99, cpu=cpu))
    for rps, p99 in ((900, 60), (1000, 50), (1100, 40)):
        load.append(run("decode-c64", "triton", rps, p99))
    for rps in (2100, 2200, 2300):
        load.append(run("decode-c64", "echo", rps, 5))
    load.append(run("decode-c1", "service", 900, 2.0))
    load.append(run("sample-256", "service", 10, 200, items=256))
    inprocess = [point("decoder", 256, 100.0), point("decoder", 256, 120.0), point("decoder", 256, 140.0)]
    inprocess += [point("encoder", 32, 4.0), point("decoder", 32, 6.0)]
    cold = [{"system": "service", "seconds": s} for s in (0.9, 1.5, 3.0)]
    return {"load": load, "inprocess": inprocess, "cold_start": cold}


def targets_by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["what"]: row for row in summary["targets"]}


def test_medians_over_rounds() -> None:
    summary = summarize(results())
    service = summary["load"]["decode-c64"]["service"]
    assert service["runs"] == 3
    assert service["requests_per_s"] == 2000
    assert service["p99_ms"] == 20
    assert service["server_cpu_ms_per_call"] == 0.5
    assert summary["load"]["decode-c64"]["triton"]["server_cpu_ms_per_call"] is None  # not measured
    assert summary["inprocess"]["decoder"][256]["ms_per_batch"] == 120
    assert summary["cold_start_s"] == {"service": 1.5}


def test_ratios_against_the_other_systems() -> None:
    targets = targets_by_name(summarize(results()))
    assert targets["decode-c64: req/s, service / Triton"]["value"] == pytest.approx(2.0)
    assert targets["decode-c64: req/s, service / Triton"]["met"] is True
    assert targets["decode-c64: p99, service / Triton"]["value"] == pytest.approx(0.4)
    assert targets["decode-c64: p99, service / Triton"]["met"] is True
    assert targets["decode-c64: req/s, service / echo"]["value"] == pytest.approx(2000 / 2200)
    assert targets["decode-c64: req/s, service / echo"]["met"] is True
    # No run of a system: no ratio, and no verdict either way.
    assert targets["decode-c16: req/s, service / Triton"]["value"] is None
    assert targets["decode-c16: req/s, service / Triton"]["met"] is None
    assert targets["decode-c1: p50 ms, service"]["value"] == pytest.approx(0.5)
    assert targets["cold start s, service"]["met"] is True


def test_pinned_runs_are_summarized_apart_from_unpinned_ones() -> None:
    raw = results()
    raw["load"] += [
        run("decode-c64", "service", 1500, 5, cpu=0.6, mode="pinned"),
        run("decode-c64", "minimal micro-batcher", 1000, 8, cpu=0.9, mode="pinned"),
        run("decode-c64", "minimal micro-batcher", 4000, 9, mode="unpinned"),
    ]
    summary = summarize(raw)
    assert summary["load"]["decode-c64"]["service"]["requests_per_s"] == 2000  # unpinned runs only
    assert summary["load_pinned"]["decode-c64"]["service"]["server_cpu_ms_per_call"] == 0.6
    assert set(summary["load_pinned"]["decode-c64"]) == {"service", "minimal micro-batcher"}
    targets = targets_by_name(summary)
    assert targets["decode-c64: req/s, service / minimal micro-batcher"]["value"] == pytest.approx(0.5)
    pinned = "decode-c64, pinned: req/s on one server core, service / minimal micro-batcher"
    assert targets[pinned]["value"] == pytest.approx(1.5)


def test_large_requests_against_the_in_process_ceiling() -> None:
    summary = summarize(results())
    assert inprocess_items_per_s(summary["inprocess"], "sample", 256) == pytest.approx(256 / 0.120)
    # Reconstruct runs the encoder and then the decoder: their times add up.
    assert inprocess_items_per_s(summary["inprocess"], "reconstruct", 32) == pytest.approx(32 / 0.010)
    assert inprocess_items_per_s(summary["inprocess"], "encode", 512) is None
    row = targets_by_name(summary)["sample-256: items/s, service / in-process at batch 256"]
    assert row["value"] == pytest.approx(2560 / (256 / 0.120))
    assert row["met"] is True


def test_markdown_shows_every_measured_system_and_the_ceiling() -> None:
    from benchmarks import markdown

    raw = results()
    conditions = {
        "started": "s",
        "finished": "f",
        "command": "python -m benchmarks.suite",
        "machine": {"cpus": 2, "cpu_model": "cpu", "kernel": "k", "python": "3.11"},
        "load_average_before": [1.0, 1.0, 1.0],
        "load_average_after": [2.0, 2.0, 2.0],
        "busiest_processes_before": ["50.0 python"],
        "busiest_processes_after": ["60.0 python"],
    }
    settings = {"rounds": 3, "duration": 5.0, "warmup": 1.0, "processes": 1, "triton_delay_us": 0}
    text = markdown.render(
        {"conditions": conditions, "settings": settings, "summary": summarize(raw), "raw": raw}
    )
    rows = [line for line in text.splitlines() if line.startswith("| Decode 1 latent, 64 callers |")]
    # No in-process point at batch 1 in these records, so no ceiling row for this scenario.
    assert [row.split(" | ")[1] for row in rows] == ["service", "triton", "echo"]
    assert "| Decode 1 latent, 64 callers | service | 2,000 | 2,000 |" in text
    assert "| Sample n=256, 4 callers | in-process, batch 256 |" in text
    assert "| decode-c64: req/s, service / Triton | 2.00 | >= 2 | yes |" in text
