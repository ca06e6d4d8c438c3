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
from export.graphs import TRACE_BATCH, name_batch_axis, save_graph, to_onnx
from export.parity import PARITY_BATCH_SIZES, PARITY_TOLERANCE
from repository.comparison import compare_outputs, probe_latents, recorded_difference
from repository.contract import flow_contract, flow_graph_name, graph_metadata
from repository.manifest import BASE_LATENTS, BATCH_AXIS, FLOW_GRAPHS, LATENTS, LOG_DET, PriorFlowEntry
from repository.runtime import Graph
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
    batch = torch.export.Dim(BATCH_AXIS)
    graphs = {}
    for role, (inputs, outputs) in flow_contract(config.latent_dim).items():
        proto = to_onnx(
            modules[role],
            (torch.zeros(TRACE_BATCH, config.latent_dim),),
            [t.name for t in inputs],
            [t.name for t in outputs],
            dynamic_shapes=({0: batch},),
        )
        name_batch_axis(proto)
        metadata = graph_metadata(
            name=name,
            version=version,
            latent_dim=config.latent_dim,
            image_shape=config.image_shape,
            likelihood=config.likelihood,
            pairing_id=pairing_id,
            graph=flow_graph_name(role),
            classes=config.classes,
        )
        graphs[role] = save_graph(proto, directory / f"prior_flow_{role}.onnx", metadata, inputs, outputs)
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
            differences = compare_outputs(expected[role], actual[role], PARITY_TOLERANCE)
            for d in differences:
                if not d.ok:
                    raise ExportError(
                        f"parity failed for the {flow_graph_name(role)} graph: output {d.output!r} at batch "
                        f"size {batch} {d.describe('PyTorch')}; nothing was written"
                    )
            worst[role] = max(worst[role], recorded_difference(differences))
    return worst
