"""The bundled models verify and carry the figures reported in docs/results.md."""

from __future__ import annotations

import json
from pathlib import Path

from repository.verify import verify_version

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "mnist" / "1"


def test_bundled_model_verifies() -> None:
    report = verify_version(BUNDLED)
    assert report.ok, report.failures


def test_bundled_model_is_small_and_describes_its_training() -> None:
    assert sum(f.stat().st_size for f in BUNDLED.iterdir()) < 20 * 1024 * 1024
    manifest = json.loads((BUNDLED / "model.json").read_text())
    assert (manifest["name"], manifest["version"], manifest["latent_dim"]) == ("mnist", 1, 32)
    assert manifest["training"]["model"]["architecture"] == "conv"
    assert manifest["training"]["epochs"] == manifest["training"]["train"]["epochs"]


def test_bundled_model_carries_its_reported_quality() -> None:
    evaluation = json.loads((BUNDLED / "model.json").read_text())["eval"]
    assert (evaluation["test_images"], evaluation["iw_k"]) == (10_000, 5000)
    assert evaluation["iw_nll"] <= 86.0  # the target in docs/results.md
    assert evaluation["iw_nll"] < evaluation["negative_elbo"]


CVAE = BUNDLED.parents[1] / "mnist-cvae" / "1"


def test_bundled_conditional_model_verifies_and_carries_its_reported_quality() -> None:
    report = verify_version(CVAE)
    assert report.ok, report.failures
    assert "classes" in [check.name for check in report.checks]
    manifest = json.loads((CVAE / "model.json").read_text())
    assert manifest["classes"] == [str(digit) for digit in range(10)]
    evaluation = manifest["eval"]
    assert (evaluation["test_images"], evaluation["iw_k"]) == (10_000, 5000)
    assert evaluation["conditioned_on"] == "the true label"
    assert evaluation["iw_nll"] < evaluation["negative_elbo"]
