"""The two exported graphs: the VAE split at the latent into small modules, traced into ONNX files."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from export.errors import ExportError
from repository.contract import graph_contract, graph_metadata
from repository.manifest import BATCH_AXIS, GraphEntry, TensorInfo, file_sha256
from repository.tensor_names import GRAPHS
from training.model import VAE

# torchlib's own opset: newer would make the exporter run a version converter, older ones lack ops
# it emits. onnxruntime has run opset 18 since 1.14.
OPSET = 18
# torch.export specialises sizes 0 and 1, which would pin the batch axis; trace with 2.
TRACE_BATCH = 2

# torch.onnx names a graph's weights by their path in the traced module: the VAE's state_dict keys
# under the `vae` attribute both graphs keep it in (`vae recover` reads them back).
WEIGHTS_PREFIX = "vae."


class EncoderGraph(nn.Module):
    """x float32 [batch, C, H, W] in [0, 1], and y int64 [batch] if conditional -> (mu, logvar) [batch, D]."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x, y)


class DecoderGraph(nn.Module):
    """z float32 [batch, D], and y int64 [batch] if conditional -> probs [batch, C, H, W] in [0, 1].

    Bernoulli models also output the logits.
    """

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(
        self, z: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.vae.config.likelihood == "bernoulli":
            # VAE.decode_mean is sigmoid(decode(z)); calling both would run the decoder twice in the
            # graph. Export's parity check compares probs with decode_mean itself.
            logits = self.vae.decode(z, y)
            return torch.sigmoid(logits), logits
        return self.vae.decode_mean(z, y)


def write_graphs(
    model: VAE, directory: Path, *, name: str, version: int, pairing_id: str
) -> dict[str, GraphEntry]:
    """Both graphs of `model` as ONNX files in `directory`, with their metadata, checked by onnx."""
    config = model.config
    contract = graph_contract(
        config.latent_dim, config.image_shape, config.likelihood, conditional=config.conditional
    )
    modules = {"encoder": EncoderGraph(model), "decoder": DecoderGraph(model)}
    # Tracing needs shapes, not values; zeros leave the caller's RNG state alone.
    labels = (torch.zeros(TRACE_BATCH, dtype=torch.int64),) if config.conditional else ()
    examples = {
        "encoder": (torch.zeros(TRACE_BATCH, *config.image_shape), *labels),
        "decoder": (torch.zeros(TRACE_BATCH, config.latent_dim), *labels),
    }
    return {
        role: export_graph(
            model,
            modules[role],
            examples[role],
            contract[role],
            directory / f"{role}.onnx",
            role,
            name=name,
            version=version,
            pairing_id=pairing_id,
        )
        for role in GRAPHS
    }


def export_graph(
    model: VAE,
    module: nn.Module,
    examples: tuple[torch.Tensor, ...],
    tensors: tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]],
    path: Path,
    graph: str,
    *,
    name: str,
    version: int,
    pairing_id: str,
) -> GraphEntry:
    """`module` traced at `examples` into `path`, with the metadata of `model`'s graph `graph`.

    tensors: the contract's (inputs, outputs); every input shares the one batch axis.
    """
    config = model.config
    inputs, outputs = tensors
    batch = torch.export.Dim(BATCH_AXIS)
    dynamic = tuple({0: batch} for _ in examples)  # forward's parameters, in order
    proto = to_onnx(
        module, examples, [t.name for t in inputs], [t.name for t in outputs], dynamic_shapes=dynamic
    )
    name_batch_axis(proto)
    metadata = graph_metadata(
        name=name,
        version=version,
        latent_dim=config.latent_dim,
        image_shape=config.image_shape,
        likelihood=config.likelihood,
        pairing_id=pairing_id,
        graph=graph,
        classes=config.classes,
    )
    return save_graph(proto, path, metadata, inputs, outputs)


def save_graph(
    proto: onnx.ModelProto,
    path: Path,
    metadata: dict[str, str],
    inputs: tuple[TensorInfo, ...],
    outputs: tuple[TensorInfo, ...],
) -> GraphEntry:
    """Write one graph with its metadata, checked by onnx; its manifest entry."""
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    # Serialised in one piece: torch's own save defaults to an external-data side file.
    path.write_bytes(proto.SerializeToString())
    return GraphEntry(file=path.name, sha256=file_sha256(path), inputs=inputs, outputs=outputs)


def to_onnx(
    module: torch.nn.Module,
    examples: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    *,
    dynamic_shapes: tuple[dict[int, Any], ...],
) -> onnx.ModelProto:
    """Trace `module` at `examples` into one ONNX model, the axes in dynamic_shapes left dynamic."""
    with _quiet_exporter():
        program = torch.onnx.export(
            module.eval(),
            examples,
            dynamo=True,
            input_names=input_names,
            # Without dynamic_shapes the exporter fixes every axis at the example's size.
            dynamic_shapes=dynamic_shapes,
            output_names=output_names,
            opset_version=OPSET,
            external_data=False,  # one self-contained file, no .onnx.data beside it
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notes about its own internals (missing torchvision ops, pytree renames)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            # A conditional model's two inputs share one batch axis; torch notes that it keeps one name.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def name_batch_axis(proto: onnx.ModelProto) -> None:
    """Call the dynamic leading axis of every input and output "batch", whatever torch named it."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims[0].dim_param:
            raise ExportError(
                f"{value.name}: the batch axis was exported with fixed size {dims[0].dim_value}; "
                "the dynamic_shapes given to torch.onnx.export did not take effect"
            )
        dims[0].dim_param = BATCH_AXIS
