"""The bundled models verify and carry the figures reported in docs/results.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repository.layout import list_versions, version_dir
from repository.verify import verify_version

MNIST = Path(__file__).resolve().parents[2] / "models" / "mnist"
VERSIONS = (MNIST / "1", MNIST / "2")  # version 1 (N(0, I)) stays loadable beside the default, 2
BUNDLED = VERSIONS[-1]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_bundled_versions_verify(version: Path) -> None:
    report = verify_version(version)
    assert report.ok, report.failures


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_bundled_versions_are_small_and_describe_their_training(version: Path) -> None:
    assert sum(f.stat().st_size for f in version.iterdir()) < 20 * 1024 * 1024
    manifest = json.loads((version / "model.json").read_text())
    assert (manifest["name"], manifest["version"], manifest["latent_dim"]) == ("mnist", int(version.name), 32)
    assert manifest["training"]["model"]["architecture"] == "conv"
    assert manifest["training"]["epochs"] == manifest["training"]["train"]["epochs"]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_bundled_versions_carry_their_reported_quality(version: Path) -> None:
    evaluation = json.loads((version / "model.json").read_text())["eval"]
    assert (evaluation["test_images"], evaluation["iw_k"]) == (10_000, 5000)
    assert evaluation["iw_nll"] <= 86.0  # version 1's target in docs/results.md
    assert evaluation["iw_nll"] < evaluation["negative_elbo"]


def test_the_default_version_has_the_learned_prior_and_the_better_likelihood() -> None:
    old, new = (json.loads((v / "model.json").read_text()) for v in VERSIONS)
    assert "prior" not in old  # N(0, I)
    # The VampPrior run, fine-tuned on the IW bound with its prior as the mixture it is (docs/results.md).
    assert new["prior"]["trained_as"] == "mixture" and new["training"]["model"]["prior"] == "mixture"
    assert new["training"]["train"]["objective"] == "iwae" and new["training"]["train"]["init"]
    assert new["eval"]["iw_nll"] < old["eval"]["iw_nll"] - 2 * new["eval"]["iw_nll_stderr"]
    assert new["eval"]["iw_nll"] <= 82.0  # the target of docs/results.md, at k = 5000 on every test image
    assert "iw_k_exceptions" not in new["eval"]
    assert sorted(int(p.name) for p in MNIST.iterdir() if p.name.isdigit())[-1] == new["version"]


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


def test_the_default_version_recovers_into_a_checkpoint_for_fine_tuning(tmp_path: Path) -> None:
    from export.recover import recover_run  # torch: only this test of the file needs it
    from training import checkpoint as ckpt

    path = recover_run(BUNDLED, tmp_path / "run")  # checks the rebuilt model against the graphs
    assert ckpt.load(path).model_config.prior == "mixture"


# The flow-prior run on its way to version 3 (docs/results.md): served beside the default, and the
# checkpoint the next stage of training recovers and continues from.
FLOW = version_dir(BUNDLED.parents[1], "mnist-flow", max(list_versions(BUNDLED.parents[1], "mnist-flow")))


def test_bundled_flow_model_verifies_its_flow_and_carries_a_measured_likelihood() -> None:
    report = verify_version(FLOW)
    assert report.ok, report.failures
    assert "prior-flow" in [check.name for check in report.checks]
    assert sum(f.stat().st_size for f in FLOW.iterdir()) < 20 * 1024 * 1024
    manifest = json.loads((FLOW / "model.json").read_text())
    assert (manifest["format_version"], manifest["prior_flow"]["layers"]) == (3, 8)
    assert manifest["prior"]["kind"] == "mixture" and manifest["score_reference"]["images"] == 10_000
    evaluation = manifest["eval"]
    assert evaluation["iw_nll"] < evaluation["negative_elbo"]
    assert evaluation["prior"] == "mixture, 8 prior and 0 posterior flow layers"


def test_the_flow_model_recovers_with_its_flow_for_more_training(tmp_path: Path) -> None:
    from export.recover import recover_run
    from training import checkpoint as ckpt

    recovered = ckpt.load(recover_run(FLOW, tmp_path / "run"))  # checks the flow's graphs too
    assert (recovered.model_config.prior, recovered.model_config.prior_flow_layers) == ("mixture", 8)
