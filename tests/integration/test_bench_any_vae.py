"""benchmarks.any_vae on a tiny AutoencoderKL: every section reports figures (docs/any-vae.md: SD 1.x)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import any_vae


def test_every_section_reports_figures_and_the_import_is_reused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    argv = ["--config", "tiny", "--sizes", "64", "--images", "2", "--callers", "1", "2"]
    sections = ["--sections", *any_vae.SECTIONS]
    assert any_vae.main([*argv, *sections, "--work", str(work), "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "any-vae.json").read_text())

    assert [(c["role"], c["size"]) for c in document["inprocess"]] == [("encode", 64), ("decode", 64)]
    assert all(c["images_per_s"] > 0 for c in document["inprocess"]), document["inprocess"]
    served = document["service"]["cells"]
    assert [(c["role"], c["callers"]) for c in served] == [
        ("encode", 1),
        ("encode", 2),
        ("decode", 1),
        ("decode", 2),
    ]
    assert all(c["images_per_s"] > 0 and c["ratio"] > 0 for c in served), served
    assert document["service"]["started_s"] > 0
    assert [(c["role"], c["size"]) for c in document["memory"]] == [("encode", 64), ("decode", 64)]
    assert all(c["peak_mib"] > c["image_mib"] >= 0 for c in document["memory"]), document["memory"]

    # A second run measures the version the first imported, without importing again.
    model_json = Path(document["version"]) / "model.json"
    written = model_json.stat().st_mtime_ns
    assert any_vae.prepare("tiny", work) == Path(document["version"])
    assert model_json.stat().st_mtime_ns == written
