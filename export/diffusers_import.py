"""`vae import diffusers`: a local AutoencoderKL folder (diffusers' format) -> a verified version.

The encoder graph gives the mean and log-variance of diffusers' `encode(x).latent_dist`, the decoder
graph `decode(z).sample` clamped to [-1, 1], as every diffusers pipeline clamps it before it makes
pixels. Both take any batch and any image size that is a multiple of the downsampling factor, or
the one size `image_size` fixes. Parity against diffusers in torch is checked before anything is
written; weights are read from the folder only, never fetched.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from export.errors import ExportError
from export.fp16 import add_fp16
from export.graphs import OPSET, save_graph, to_onnx
from repository.comparison import compare_outputs, probe_images, probe_latents
from repository.contract import manifest_contract, manifest_metadata
from repository.layout import publish_version, stage_version
from repository.manifest import GraphEntry, Manifest, TensorInfo, file_sha256, write_manifest
from repository.model_spec import (
    AXES,
    BATCH_AXIS,
    DETERMINISTIC,
    ImageSpec,
    LatentSpec,
)
from repository.runtime import Graph
from repository.tensor_names import DECODED_IMAGE, GRAPHS, IMAGES, LATENTS, LOGVAR, MU
from repository.verify import verify_version

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
SUPPORTED_CLASSES = ("AutoencoderKL",)
VALUE_RANGE = (-1.0, 1.0)  # diffusers' VAEs take and give images in [-1, 1]
PARITY_BATCH_SIZES = (1, 3)
# In units of the downsampling factor: one square size and one of another aspect (64x64 and 32x80
# for factor 8), so that both spatial axes are exercised apart.
PARITY_SIZES = ((8, 8), (4, 10))
PARITY_TOLERANCE = 1e-4
# torch.export specialises sizes 0 and 1 and ties equal example sizes: trace with batch 2 and a
# latent of 4x3.
_TRACE_BATCH, _TRACE_LATENT = 2, (4, 3)


class EncoderGraph(nn.Module):
    """x float32 [batch, C, H, W] in [-1, 1] -> (mu, logvar) [batch, c, H/f, W/f] of latent_dist."""

    def __init__(self, vae: Any) -> None:  # diffusers' AutoencoderKL, untyped
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.logvar


class DecoderGraph(nn.Module):
    """z float32 [batch, c, h, w] -> image [batch, C, h*f, w*f], clamped to [-1, 1]."""

    def __init__(self, vae: Any) -> None:  # diffusers' AutoencoderKL, untyped
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        image: torch.Tensor = self.vae.decode(z).sample
        return image.clamp(*VALUE_RANGE)


def read_folder(folder: Path) -> dict[str, Any]:
    """config.json of a diffusers model folder, refused with the reason unless an importable AutoencoderKL."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory; pass a folder in diffusers' format")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ExportError(
            f"{folder} is not in diffusers' format: it has no {CONFIG_FILE} (save_pretrained writes one, "
            "and so does downloading the model's vae/ folder)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{config_path} is not readable JSON ({exc})") from exc
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind not in SUPPORTED_CLASSES:
        raise ExportError(
            f"{config_path} describes a {kind!r}; vae import diffusers takes {', '.join(SUPPORTED_CLASSES)} "
            "(the VAE of Stable Diffusion, SDXL and Flux)"
        )
    if not (folder / WEIGHTS_FILE).is_file():
        raise ExportError(
            f"{folder} has no {WEIGHTS_FILE}: save or download the weights in safetensors format "
            "(pickled .bin weights are not read)"
        )
    return dict(config)


def import_diffusers(
    folder: Path,
    repo: Path,
    name: str,
    *,
    version: int | None = None,
    fp16: bool = False,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Import the AutoencoderKL in `folder` as repo/name/version (default: the next free one).

    `image_size` (H, W) fixes the size the graphs take (their spatial axes static); None: any size.
    """
    read_folder(folder)
    from diffusers import AutoencoderKL

    loaded = AutoencoderKL.from_pretrained(  # type: ignore[no-untyped-call]
        folder,
        local_files_only=True,
        use_safetensors=True,
        low_cpu_mem_usage=False,  # no accelerate
    )
    vae: Any = loaded.eval()
    config = vae.config
    if config.out_channels != config.in_channels:
        raise ExportError(
            f"{folder}: the model encodes {config.in_channels}-channel images but decodes "
            f"{config.out_channels} channels; Reconstruct needs both the same"
        )
    factor = 2 ** (len(config.block_out_channels) - 1)
    if image_size is not None and any(side % factor for side in image_size):
        raise ExportError(
            f"--image-size {image_size[0]}x{image_size[1]}: both sides must be multiples of the model's "
            f"downsampling factor {factor}"
        )
    with stage_version(repo, name, version) as staged:
        manifest = Manifest(
            name=name,
            version=staged.version,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            image=ImageSpec(
                channels=config.in_channels, size=image_size, multiple_of=factor, value_range=VALUE_RANGE
            ),
            latent=LatentSpec(
                channels=config.latent_channels,
                downsampling=factor,
                scaling_factor=float(config.scaling_factor),
                shift_factor=float(config.shift_factor or 0.0),
            ),
            decoder_output=DETERMINISTIC,
            has_prior=False,  # trained with a KL weight near 0: N(0, I) samples are not images
            scorable=False,  # a deterministic decoder: no likelihood
            opset=OPSET,
            pairing_id=uuid.uuid4().hex,
            graphs={},
            fp16=None,
            parity_max_abs_diff={},
            parity_batch_sizes=PARITY_BATCH_SIZES,
            parity_image_sizes=(image_size,)
            if image_size
            else tuple((h * factor, w * factor) for h, w in PARITY_SIZES),
            eval=None,
            training={},
            source=_source(folder, vae),
        )
        graphs = _write_graphs(vae, staged.path, manifest)
        manifest = dataclasses.replace(manifest, graphs=graphs)
        manifest = dataclasses.replace(manifest, parity_max_abs_diff=check_parity(vae, staged.path, manifest))
        if fp16:
            manifest = add_fp16(staged.path, manifest)
        write_manifest(staged.path, manifest)
        verify_version(staged.path).raise_for_failures()
        return publish_version(staged)


def _source(folder: Path, vae: Any) -> dict[str, Any]:
    import diffusers

    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    return {
        "format": "diffusers",
        "class": type(vae).__name__,
        "diffusers_version": diffusers.__version__,
        # tuples become lists, as config.json has them
        "config": json.loads(json.dumps(config, default=list)),
        "weights_sha256": file_sha256(folder / WEIGHTS_FILE),
    }


def _write_graphs(vae: Any, directory: Path, manifest: Manifest) -> dict[str, GraphEntry]:
    factor = manifest.latent.downsampling or 1
    batch, lh, lw = torch.export.Dim(BATCH_AXIS), torch.export.Dim("h"), torch.export.Dim("w")
    encoder_axes: dict[int, Any] = {0: batch, 2: factor * lh, 3: factor * lw}
    decoder_axes: dict[int, Any] = {0: batch, 2: lh, 3: lw}
    if manifest.image.size is None:
        h, w = _TRACE_LATENT
    else:  # a fixed size: only the batch axis stays dynamic
        h, w = (side // factor for side in manifest.image.size)
        encoder_axes, decoder_axes = {0: batch}, {0: batch}
    traced = {
        "encoder": (
            EncoderGraph(vae),
            torch.zeros(_TRACE_BATCH, manifest.image.channels, h * factor, w * factor),
            encoder_axes,
        ),
        "decoder": (
            DecoderGraph(vae),
            torch.zeros(_TRACE_BATCH, manifest.latent.channels, h, w),
            decoder_axes,
        ),
    }
    contract = manifest_contract(manifest)
    entries = {}
    for role in GRAPHS:
        module, example, dynamic = traced[role]
        inputs, outputs = contract[role]
        names = [t.name for t in inputs], [t.name for t in outputs]
        proto = to_onnx(module, (example,), *names, dynamic_shapes=(dynamic,))
        _name_axes(proto, [*inputs, *outputs])
        metadata = manifest_metadata(manifest, role)
        entries[role] = save_graph(proto, directory / f"{role}.onnx", metadata, inputs, outputs)
    return entries


def _name_axes(proto: onnx.ModelProto, expected: list[TensorInfo]) -> None:
    """Give the dynamic axes the contract's names (torch calls them s0, 8*h, ...); refuse fixed ones."""
    values = {value.name: value for value in [*proto.graph.input, *proto.graph.output]}
    for tensor in expected:
        dims = values[tensor.name].type.tensor_type.shape.dim
        for dim, axis in zip(dims, tensor.shape, strict=True):
            if axis in AXES:
                if not dim.dim_param:
                    raise ExportError(
                        f"{tensor.name}: axis {axis!r} was exported with fixed size {dim.dim_value}; "
                        "the dynamic_shapes given to torch.onnx.export did not take effect"
                    )
                dim.dim_param = axis


def check_parity(vae: Any, directory: Path, manifest: Manifest) -> dict[str, float]:
    """onnxruntime against diffusers' encode and decode at each parity batch and image size."""
    encoder = Graph(directory / manifest.graphs["encoder"].file)
    decoder = Graph(directory / manifest.graphs["decoder"].file)
    worst = dict.fromkeys(GRAPHS, 0.0)
    channels = manifest.image.channels
    for batch in PARITY_BATCH_SIZES:
        for size in manifest.parity_image_sizes:
            x = probe_images((channels, *size), batch, seed=batch, value_range=VALUE_RANGE)
            z = probe_latents(manifest.latent_shape(size), batch, seed=batch)
            with torch.no_grad():
                dist = vae.encode(torch.from_numpy(x)).latent_dist
                image = vae.decode(torch.from_numpy(z)).sample.clamp(*VALUE_RANGE)
            expected = {
                "encoder": {MU: dist.mean.numpy(), LOGVAR: dist.logvar.numpy()},
                "decoder": {DECODED_IMAGE: image.numpy()},
            }
            actual = {"encoder": encoder.run({IMAGES: x}), "decoder": decoder.run({LATENTS: z})}
            for role in GRAPHS:
                for d in compare_outputs(expected[role], actual[role], PARITY_TOLERANCE, scaled=()):
                    if not d.ok:
                        raise ExportError(
                            f"parity failed for the {role} graph: output {d.output!r} at batch size {batch}, "
                            f"image size {size[0]}x{size[1]} {d.describe('diffusers')}; nothing was written"
                        )
                    worst[role] = max(worst[role], d.max_abs_diff)
    return worst
