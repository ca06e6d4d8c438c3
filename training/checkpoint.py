"""Self-describing checkpoints: weights with the configs that rebuild them, and resume state."""

from __future__ import annotations

import dataclasses
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
from training.priors import mixture_state

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


def initial_weights(source: Path, model_config: ModelConfig) -> tuple[dict[str, Any], float]:
    """The weights of the run at source as a start for a model of model_config, and its train_seconds.

    The networks must be the same. A VampPrior may start a mixture prior of as many components: the
    mixture it is, the encoder's posteriors at its pseudo-inputs, which is also what export writes.
    """
    state = load(source)
    if state.model_config == model_config:
        return state.model_state, state.train_seconds
    same_network = dataclasses.replace(
        state.model_config, prior=model_config.prior, prior_components=model_config.prior_components
    )
    vamp_to_mixture = (state.model_config.prior, model_config.prior) == ("vamp", "mixture") and (
        state.model_config.prior_components == model_config.prior_components
    )
    if same_network != model_config or not vamp_to_mixture:
        raise ValueError(
            f"train.init = {str(source)!r} holds another model ({state.model_config}); a run can start "
            "from one of the same network and prior, or from a VampPrior of as many components when it "
            "learns a mixture prior"
        )
    with torch.no_grad():
        components = state.build_model().prior_components()
    assert components is not None, "a VampPrior has components"
    weights = {name: value for name, value in state.model_state.items() if not name.startswith("prior.")}
    weights |= mixture_state(components)
    return weights, state.train_seconds
