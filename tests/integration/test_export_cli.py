"""`vae export` then `vae verify` as a user runs them: separate processes, a real checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from helpers import vae

from repository.layout import list_versions
from training import checkpoint as ckpt
from training.config import ModelConfig, TrainConfig
from training.model import VAE

VAMP_COMPONENTS = 3  # conftest's tiny VampPrior


def _vae(*args: str) -> subprocess.CompletedProcess[str]:
    return vae(*args, check=False, timeout=240)  # the exporter alone can take a minute on a busy machine


def _toy_run(run: Path) -> Path:
    """A run directory holding the checkpoint of a small untrained MLP VAE."""
    config = ModelConfig(architecture="mlp", image_shape=(1, 8, 8), latent_dim=2, widths=(16,))
    torch.manual_seed(0)
    state = VAE(config).state_dict()
    run.mkdir()
    ckpt.save(
        run / ckpt.LAST,
        ckpt.Checkpoint(
            model_config=config,
            train_config=TrainConfig(epochs=1),
            epoch=1,
            step=1,
            model_state=state,
            optimizer_state=None,
            best_val_nelbo=100.0,
            train_seconds=1.0,
        ),
    )
    return run


def test_export_then_verify(tmp_path: Path) -> None:
    run = _toy_run(tmp_path / "run")
    repo = tmp_path / "models"

    # --score-k 0: the toy model has no test set of its shape to record Score quantiles of.
    exported = _vae("export", str(run), "--repo", str(repo), "--name", "toy", "--fp16", "--score-k", "0")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == f"exported {repo / 'toy' / '1'}\n"
    assert exported.stderr == ""  # the exporter's notes about its own internals stay hidden

    verified = _vae("verify", str(repo / "toy" / "1"))
    assert verified.returncode == 0, verified.stdout
    assert "ok    fp16: half-precision graphs within 0.01 of float32" in verified.stdout

    again = _vae("export", str(run), "--repo", str(repo), "--name", "toy", "--version", "1", "--score-k", "0")
    assert again.returncode == 2
    assert "already exists; versions are immutable" in again.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["toy"]


def test_a_number_published_by_mv_is_not_issued_again_after_its_version_is_deleted(tmp_path: Path) -> None:
    run = _toy_run(tmp_path / "run")
    repo, staging = tmp_path / "models", tmp_path / "staging"
    export = ("export", str(run), "--name", "toy", "--score-k", "0")
    first = _vae(*export, "--repo", str(repo))
    assert first.returncode == 0, first.stderr
    # docs/api.md: write the version elsewhere on the same filesystem, then `mv` it into place.
    staged = _vae(*export, "--repo", str(staging), "--version", "2")
    assert staged.returncode == 0, staged.stderr
    subprocess.run(["mv", str(staging / "toy" / "2"), str(repo / "toy" / "2")], check=True)
    assert list_versions(repo, "toy") == [1, 2]  # what a server's loader does on every (re)load
    shutil.rmtree(repo / "toy" / "2")  # version 2 served a model that clients may still pin

    again = _vae(*export, "--repo", str(repo))
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"exported {repo / 'toy' / '3'}\n"


def test_recover_rebuilds_the_checkpoint_behind_a_version(
    tmp_path: Path, tiny_vamp_repo: Path, tiny_model_builder: Callable[..., VAE]
) -> None:
    version = tiny_vamp_repo / "tiny-vamp" / "1"
    run = tmp_path / "run"
    recovered = _vae("recover", str(version), "--run", str(run))
    assert recovered.returncode == 0, recovered.stderr
    assert recovered.stdout == f"recovered {run / ckpt.LAST}\n"

    state = ckpt.load(run)
    original = tiny_model_builder(0, prior="vamp", prior_components=VAMP_COMPONENTS)
    # The pseudo-inputs are not exported: the VampPrior comes back as the mixture it was exported as.
    assert state.model_config == dataclasses.replace(original.config, prior="mixture")
    for name, tensor in original.state_dict().items():
        if not name.startswith("prior."):
            assert torch.equal(state.model_state[name], tensor), name
    with np.load(version / "prior.npz") as prior:
        assert np.array_equal(state.model_state["prior.means"].numpy(), prior["means"])
        assert np.array_equal(state.model_state["prior.logvars"].numpy(), prior["logvars"])
        assert np.array_equal(state.model_state["prior.logits"].numpy(), prior["log_weights"])
    training = json.loads((version / "model.json").read_text())["training"]
    assert (state.epoch, state.train_seconds) == (training["epochs"], training["train_seconds"])

    again = _vae("recover", str(version), "--run", str(run))
    assert again.returncode == 2 and "exists; recover into a new run directory" in again.stderr
