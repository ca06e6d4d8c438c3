"""Self-describing checkpoints: weights with the configs that rebuild them, and resume state."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
    averaged_epochs: tuple[int, ...] = ()  # the snapshots `vae average` made these weights from

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
        "averaged_epochs": list(checkpoint.averaged_epochs),
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
        averaged_epochs=tuple(payload.get("averaged_epochs", ())),
    )


def initial_weights(
    source: Path, model_config: ModelConfig, fresh: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], float]:
    """The weights of the run at source as a start for a model of model_config, and its train_seconds.

    The networks must be the same. A VampPrior may start a mixture prior of as many components: the
    mixture it is, the encoder's posteriors at its pseudo-inputs, which is also what export writes.
    A flow the source lacks may be added (prior, posterior or both): its weights come from `fresh`
    (the new model's own), where each flow starts as the identity, so the new run starts as the old model.
    """
    state = load(source)
    if state.model_config == model_config:
        return state.model_state, state.train_seconds
    old, new = state.model_config, model_config
    same_prior = (old.prior, old.prior_components) == (new.prior, new.prior_components)
    vamp_to_mixture = (old.prior, new.prior) == ("vamp", "mixture") and (
        old.prior_components == new.prior_components
    )
    added = _added_flows(old, new)
    same_network = dataclasses.replace(
        old,
        prior=new.prior,
        prior_components=new.prior_components,
        prior_flow_layers=new.prior_flow_layers,
        posterior_flow_layers=new.posterior_flow_layers,
        flow_hidden=new.flow_hidden,
    )
    if added is None or same_network != new or not (same_prior or vamp_to_mixture):
        raise ValueError(
            f"train.init = {str(source)!r} holds another model ({old}); a run can start from one of the "
            "same network and prior, from a VampPrior of as many components when it learns a mixture "
            "prior, and from one without a flow when it adds it"
        )
    weights = dict(state.model_state)
    if vamp_to_mixture:
        with torch.no_grad():
            components = state.build_model().prior_components()
        assert components is not None, "a VampPrior has components"
        weights = {name: value for name, value in weights.items() if not name.startswith("prior.")}
        weights |= mixture_state(components)
    weights |= {name: value for name, value in fresh.items() if name.startswith(added)}
    return weights, state.train_seconds


def _added_flows(old: ModelConfig, new: ModelConfig) -> tuple[str, ...] | None:
    """The state-dict prefixes of the flows `new` adds to `old`; None if a flow of `old` changed."""
    added = []
    for prefix, before, after in (
        ("prior_flow.", old.prior_flow_layers, new.prior_flow_layers),
        ("posterior_flow.", old.posterior_flow_layers, new.posterior_flow_layers),
    ):
        if before and (before != after or old.flow_hidden != new.flow_hidden):
            return None  # a trained flow cannot change shape
        if after and not before:
            added.append(prefix)
    return tuple(added)
