"""`make bench-gpu`'s logic on the CPU: every section runs on tiny sizes and lands in gpu.json and gpu.md."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.gpu import bench
from benchmarks.gpu.inprocess import METHODS


def test_every_section_reports_numbers(tmp_path: Path) -> None:
    loads = ["decode-1-c64", "sample-256-c16-uint8", "decode-1024-c8"]
    code = bench.main(
        [
            *("--device", "cpu", "--out", str(tmp_path), "--budget-s", "200"),
            *("--batches", "1", "8", "--cell-s", "0.01", "--precision-batches", "8"),
            *("--workers", "1", "auto", "--executor-workers", "auto"),
            *("--loads", *loads, "--load-s", "0.5", "--load-warmup-s", "0.1"),
        ]
    )
    sections = json.loads((tmp_path / "gpu.json").read_text())["sections"]
    statuses = {name: s["status"] for name, s in sections.items()}
    assert statuses == dict.fromkeys(["environment", *bench.SECTIONS], "ok"), sections
    assert code == 0
    assert "CPUExecutionProvider" in sections["environment"]["providers"]

    cells = sections["sweep"]["cells"]
    assert len(cells) == 2 * 2 * len(METHODS)
    # torch's row may be skipped where torch is missing; every other cell has a figure.
    assert all(c["items_per_s"] > 0 for c in cells if c["method"] != "torch-eager"), cells

    for setting in sections["parity"]["settings"]:
        assert setting["max_abs_diff"] == {"encoder": 0.0, "decoder": 0.0}  # the CPU against itself
        assert all(v > 0 for sizes in setting["items_per_s"].values() for v in sizes.values())

    counts = sections["tests"]["counts"]
    assert counts["skipped"] > 0 and counts["failed"] == counts["errors"] == 0, sections["tests"]  # no CUDA

    configs = sections["service"]["configs"]
    assert [(c["workers"], c["device_executor"]) for c in configs] == [
        (1, False),
        ("auto", False),
        ("auto", True),
    ]
    assert configs[1]["auto_workers"] == configs[2]["auto_workers"] == 1  # auto on the CPU
    for config in configs:
        assert config["started_s"] > 0 and config["plugin_ep_log_lines"] == 0
        assert set(config["loads"]) == set(loads)
        for name, record in config["loads"].items():
            assert "error" not in record, (name, record)
            assert record["calls"] > 0 and record["calls"] == record["requests"] + sum(
                record["errors"].values()
            )

    page = (tmp_path / "gpu.md").read_text()
    assert "## Measured" in page and "## Baseline (2026-12-04" in page
    assert "| graph-plain |" in page and "| Decode 1 latent, 64 callers |" in page
    assert "| cpu, 1 worker(s) | cpu, auto (1) worker(s) | cpu, auto (1) + executor worker(s) |" in page
    assert "Measured below: `--workers auto (1)` against 1: Decode 1 latent, 64 callers " in page
    flowing = " ".join(page.split())  # the findings are wrapped at 100 columns
    assert (
        "`--workers auto (1) + executor` against independent workers: Decode 1 latent, 64 callers " in flowing
    )
    assert "Measured below: `Graph.run` against a bare `session.run`" in page
