"""`vae recover`: an exported version's graphs and prior back into a training checkpoint.

torch.onnx names each graph's weights by their path in the module it traced, so the VAE's own
state_dict keys stand under EncoderGraph's and DecoderGraph's attribute (and a prior flow's graphs').
A version thus holds every weight of a Bernoulli model, and its run can be fine-tuned (`train.init`)
when the checkpoint is gone.
A VampPrior's pseudo-inputs are not exported, only the mixture they make: the recovered model learns
that mixture as its own (prior = "mixture").
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from export.errors import ExportError
from export.flow_graphs import check_flow_parity
from export.graphs import WEIGHTS_PREFIX
from export.parity import check_parity
from repository.errors import CommandError
from repository.manifest import FLOW_GRAPHS, read_manifest
from repository.prior import GaussianMixture, load_base_prior
from repository.tensor_names import GRAPHS
from training import checkpoint as ckpt
from training.config import model_config_from_dict, train_config_from_dict
from training.model import VAE
from training.priors import mixture_state


def recover_run(version_dir: Path, run: Path) -> Path:
    """Write RUN/last.pt holding the version's model, checked against its graphs; returns its path."""
    target = run / ckpt.LAST
    if target.exists():
        raise CommandError(f"{target} exists; recover into a new run directory")
    manifest = read_manifest(version_dir)
    training = manifest.training
    model_config = model_config_from_dict(dict(training["model"]))
    if model_config.prior == "vamp":
        model_config = dataclasses.replace(model_config, prior="mixture")
    model = VAE(model_config)
    weights: dict[str, torch.Tensor] = {}
    files = [manifest.graphs[role].file for role in GRAPHS]
    if manifest.prior_flow is not None:
        files += [manifest.prior_flow.graphs[role].file for role in FLOW_GRAPHS]
    for file in files:
        graph = onnx.load(str(version_dir / file))
        for initializer in graph.graph.initializer:
            if initializer.name.startswith(WEIGHTS_PREFIX):
                array = numpy_helper.to_array(initializer).copy()
                weights[initializer.name.removeprefix(WEIGHTS_PREFIX)] = torch.from_numpy(array)
    prior = load_base_prior(version_dir, manifest)
    if isinstance(prior, GaussianMixture):
        arrays = (prior.means, prior.logvars, prior.log_weights)
        weights |= mixture_state(tuple(torch.from_numpy(a) for a in arrays))  # type: ignore[arg-type]
    # A buffer (a coupling layer's mask) is built from the config; onnx keeps one copy of equal constants,
    # so a buffer may have no initializer of its own. The parity checks below cover the built ones.
    built = model.state_dict()
    weights |= {name: built[name] for name, _ in model.named_buffers() if name not in weights}
    missing = sorted(set(built) - set(weights))
    if missing:
        raise ExportError(f"{version_dir}'s graphs lack weights of its model: {missing}")
    model.load_state_dict(weights)
    check_parity(model.eval(), version_dir)
    if manifest.prior_flow is not None:
        check_flow_parity(
            model, {role: version_dir / entry.file for role, entry in manifest.prior_flow.graphs.items()}
        )
    run.mkdir(parents=True, exist_ok=True)
    checkpoint = ckpt.Checkpoint(
        model_config,
        train_config_from_dict(dict(training["train"])),
        epoch=int(training["epochs"]),
        step=0,  # not exported
        model_state=model.state_dict(),
        optimizer_state=None,
        best_val_nelbo=math.inf,
        train_seconds=float(training["train_seconds"]),
        averaged_epochs=tuple(training.get("averaged_epochs", ())),
    )
    ckpt.save(target, checkpoint)
    return target
