"""Self-describing checkpoints: weights with the configs that rebuild them, and resume state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import (
    ModelConfig,
    TrainConfig,
    model_config_from_dict,
    to_dict,
    train_config_from_dict,
)
from training.model import VAE

BEST = "best.pt"
LAST = "last.pt"


SNAPSHOT_GLOB = "epoch-*.pt"  # kept every train.snapshot_every epochs


def snapshot_name(epoch: int) -> str:
    return f"epoch-{epoch:03d}.pt"


@dataclass
class Checkpoint:
    model_config: ModelConfig
    train_config: TrainConfig
    epoch: int  # epochs completed
    step: int
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any] | None
    best_val_nelbo: float
    train_seconds: float

    def build_model(self) -> VAE:
        model = VAE(self.model_config)
        model.load_state_dict(self.model_state)
        return model.eval()


def save(path: Path, checkpoint: Checkpoint) -> None:
    payload = {
        "model_config": to_dict(checkpoint.model_config),
        "train_config": to_dict(checkpoint.train_config),
        "epoch": checkpoint.epoch,
        "step": checkpoint.step,
        "model_state": checkpoint.model_state,
        "optimizer_state": checkpoint.optimizer_state,
        "best_val_nelbo": checkpoint.best_val_nelbo,
        "train_seconds": checkpoint.train_seconds,
    }
    partial = path.with_suffix(".tmp")
    torch.save(payload, partial)
    partial.replace(path)  # never leave a truncated checkpoint where a good one was


def load(path: Path) -> Checkpoint:
    """Load a checkpoint file, or best.pt (else last.pt) from a run directory."""
    if path.is_dir():
        path = path / BEST if (path / BEST).exists() else path / LAST
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train a model first with `vae train`")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return Checkpoint(
        model_config=model_config_from_dict(payload["model_config"]),
        train_config=train_config_from_dict(payload["train_config"]),
        epoch=payload["epoch"],
        step=payload["step"],
        model_state=payload["model_state"],
        optimizer_state=payload["optimizer_state"],
        best_val_nelbo=payload["best_val_nelbo"],
        train_seconds=payload["train_seconds"],
    )
