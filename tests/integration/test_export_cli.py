"""`vae export` then `vae verify` as a user runs them: separate processes, a real checkpoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from helpers import vae

from training import checkpoint as ckpt
from training.config import ModelConfig, TrainConfig
from training.model import VAE


def _vae(*args: str) -> subprocess.CompletedProcess[str]:
    return vae(*args, check=False, timeout=240)  # the exporter alone can take a minute on a busy machine


def test_export_then_verify(tmp_path: Path) -> None:
    config = ModelConfig(architecture="mlp", image_shape=(1, 8, 8), latent_dim=2, widths=(16,))
    torch.manual_seed(0)
    state = VAE(config).state_dict()
    run = tmp_path / "run"
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
