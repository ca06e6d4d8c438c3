"""A prior flow's two graphs (issue 31): density z -> (u, log_det), sampler u -> z, checked against PyTorch.

Each graph keeps the whole VAE under the attribute `vae`, as the encoder's and decoder's do, so its
weights are named by their state_dict keys and `vae recover` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from export.errors import ExportError
from export.graphs import TRACE_BATCH, export_graph
from export.parity import PARITY_BATCH_SIZES, parity_difference
from repository.comparison import probe_latents
from repository.contract import flow_contract, flow_graph_name
from repository.manifest import FLOW_GRAPHS, PriorFlowEntry
from repository.runtime import Graph
from repository.tensor_names import BASE_LATENTS, LATENTS, LOG_DET
from training.flows import CouplingFlow
from training.model import VAE


def _flow(vae: VAE) -> CouplingFlow:
    if vae.prior_flow is None:
        raise ExportError("the model has no prior flow")
    return vae.prior_flow


class FlowDensityGraph(nn.Module):
    """z float32 [batch, D] -> (u = f(z) [batch, D], log|det df/dz| [batch])."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flowed: tuple[torch.Tensor, torch.Tensor] = _flow(self.vae)(z)
        return flowed


class FlowSamplerGraph(nn.Module):
    """u float32 [batch, D], a point of the base prior -> z = f^-1(u) [batch, D]."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return _flow(self.vae).inverse(u)


def write_prior_flow(
    model: VAE, directory: Path, *, name: str, version: int, pairing_id: str
) -> PriorFlowEntry:
    """Both flow graphs of `model` in `directory`, checked by onnx and against PyTorch; their entry."""
    config = model.config
    modules = {"density": FlowDensityGraph(model), "sampler": FlowSamplerGraph(model)}
    graphs = {
        role: export_graph(
            model,
            modules[role],
            (torch.zeros(TRACE_BATCH, config.latent_dim),),
            tensors,
            directory / f"prior_flow_{role}.onnx",
            flow_graph_name(role),
            name=name,
            version=version,
            pairing_id=pairing_id,
        )
        for role, tensors in flow_contract(config.latent_dim).items()
    }
    return PriorFlowEntry(
        layers=config.prior_flow_layers,
        graphs=graphs,
        parity_max_abs_diff=check_flow_parity(
            model, {role: directory / graphs[role].file for role in graphs}
        ),
    )


def check_flow_parity(model: VAE, files: Mapping[str, Path]) -> dict[str, float]:
    """onnxruntime against PyTorch at each parity batch size: max abs difference per flow graph.

    log_det, a sum over the latent's dimensions, is compared relative to its scale.
    """
    flow = _flow(model)
    density, sampler = (Graph(files[role]) for role in FLOW_GRAPHS)
    worst = dict.fromkeys(FLOW_GRAPHS, 0.0)
    for batch in PARITY_BATCH_SIZES:
        points = probe_latents(model.config.latent_dim, batch, seed=batch)
        with torch.no_grad():
            u, log_det = flow(torch.from_numpy(points))
            z = flow.inverse(torch.from_numpy(points))
        expected = {
            "density": {BASE_LATENTS: u.numpy(), LOG_DET: log_det.numpy()},
            "sampler": {LATENTS: z.numpy()},
        }
        actual = {"density": density.run({LATENTS: points}), "sampler": sampler.run({BASE_LATENTS: points})}
        for role in FLOW_GRAPHS:
            difference = parity_difference(flow_graph_name(role), batch, expected[role], actual[role])
            worst[role] = max(worst[role], difference)
    return worst
