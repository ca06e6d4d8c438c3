"""The graph contract: the tensors every encoder and decoder take and give, and each graph's metadata.

Export and import build graphs to it and verify checks them against it; imports neither torch nor onnx.
"""

from __future__ import annotations

import json

from repository.manifest import BATCH_AXIS, Manifest, Shape, TensorInfo
from repository.model_spec import (
    DETERMINISTIC,
    HEIGHT,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    WIDTH,
    ImageSpec,
    LatentSpec,
    flat_specs,
)
from repository.tensor_names import (
    BASE_LATENTS,
    DECODED_IMAGE,
    IMAGES,
    LABEL_DTYPE,
    LABELS,
    LATENTS,
    LOG_DET,
    LOGITS,
    LOGVAR,
    MU,
    PROBS,
)

Contract = dict[str, tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]]


def graph_contract(
    latent_dim: int, image_shape: tuple[int, int, int], likelihood: str, *, conditional: bool = False
) -> Contract:
    """The contract of a format_version 1 model: a flat latent, a fixed image size (contract_of)."""
    image, latent = flat_specs(latent_dim, image_shape)
    return contract_of(image, latent, likelihood, conditional=conditional)


def manifest_contract(manifest: Manifest) -> Contract:
    return contract_of(
        manifest.image, manifest.latent, manifest.decoder_output, conditional=manifest.conditional
    )


def contract_of(
    image: ImageSpec, latent: LatentSpec, decoder_output: str, *, conditional: bool = False
) -> Contract:
    """The inputs and outputs every encoder and decoder must have: {graph: (inputs, outputs)}.

    Images are [batch, C, H, W], with axes named height and width when the model takes any size;
    latents [batch, D] or [batch, C, h, w], h = H / downsampling (latent_height when H is dynamic).
    A conditional model's graphs both take the class index LABELS as their second input.
    """
    sides: tuple[int | str, int | str] = (HEIGHT, WIDTH) if image.size is None else image.size
    image_axes: Shape = (BATCH_AXIS, image.channels, *sides)
    latent_axes: Shape = (BATCH_AXIS, latent.channels)
    if latent.downsampling is not None:
        factor = latent.downsampling
        if image.size is None:
            latent_axes += (LATENT_HEIGHT, LATENT_WIDTH)
        else:
            latent_axes += (image.size[0] // factor, image.size[1] // factor)
    labels = (TensorInfo(name=LABELS, dtype=LABEL_DTYPE, shape=(BATCH_AXIS,)),) if conditional else ()
    if decoder_output == DETERMINISTIC:
        decoder_outputs = [TensorInfo(name=DECODED_IMAGE, dtype="float32", shape=image_axes)]
    else:
        decoder_outputs = [TensorInfo(name=PROBS, dtype="float32", shape=image_axes)]
    if decoder_output == "bernoulli":
        decoder_outputs.append(TensorInfo(name=LOGITS, dtype="float32", shape=image_axes))
    return {
        "encoder": (
            (TensorInfo(name=IMAGES, dtype="float32", shape=image_axes), *labels),
            (
                TensorInfo(name=MU, dtype="float32", shape=latent_axes),
                TensorInfo(name=LOGVAR, dtype="float32", shape=latent_axes),
            ),
        ),
        "decoder": (
            (TensorInfo(name=LATENTS, dtype="float32", shape=latent_axes), *labels),
            tuple(decoder_outputs),
        ),
    }


def flow_contract(latent_dim: int) -> Contract:
    """A prior flow's two graphs: density z [batch, D] -> (u [batch, D], log_det [batch]), sampler u -> z."""
    z = TensorInfo(name=LATENTS, dtype="float32", shape=(BATCH_AXIS, latent_dim))
    u = TensorInfo(name=BASE_LATENTS, dtype="float32", shape=(BATCH_AXIS, latent_dim))
    log_det = TensorInfo(name=LOG_DET, dtype="float32", shape=(BATCH_AXIS,))
    return {"density": ((z,), (u, log_det)), "sampler": ((u,), (z,))}


def flow_graph_name(role: str) -> str:
    """A prior flow graph's name in its metadata (vae.graph) and in messages."""
    return f"prior_flow.{role}"


def describe_model(manifest: Manifest) -> str:
    """The fields the contract follows from, for messages: format 1's, or format 2's."""
    conditioning = f"{len(manifest.classes)} classes" if manifest.conditional else "no classes"
    if manifest.format_version == 1:
        return (
            f"latent_dim {manifest.latent_dim}, image_shape {list(manifest.image_shape)}, likelihood "
            f"{manifest.likelihood!r} and {conditioning}"
        )
    return (
        f"image {manifest.image.to_json()}, latent {manifest.latent.to_json()}, decoder_output "
        f"{manifest.decoder_output!r} and {conditioning}"
    )


def graph_metadata(
    *,
    name: str,
    version: int,
    latent_dim: int,
    image_shape: tuple[int, int, int],
    likelihood: str,
    pairing_id: str,
    graph: str,
    classes: tuple[str, ...] = (),
) -> dict[str, str]:
    """The metadata_props every exported graph carries, so a lone file still says what it is."""
    return {
        **({"vae.classes": json.dumps(list(classes))} if classes else {}),
        "vae.name": name,
        "vae.version": str(version),
        "vae.latent_dim": str(latent_dim),
        "vae.image_shape": json.dumps(list(image_shape)),
        "vae.likelihood": likelihood,
        "vae.pairing_id": pairing_id,
        "vae.graph": graph,
    }


def manifest_metadata(manifest: Manifest, graph: str) -> dict[str, str]:
    """The metadata_props a version's graph must carry: format 1's keys, or format 2's model fields."""
    if manifest.format_1_expressible:
        return graph_metadata(
            name=manifest.name,
            version=manifest.version,
            latent_dim=manifest.latent_dim,
            image_shape=manifest.image_shape,
            likelihood=manifest.likelihood,
            pairing_id=manifest.pairing_id,
            graph=graph,
            classes=manifest.classes,
        )
    return {
        **({"vae.classes": json.dumps(list(manifest.classes))} if manifest.classes else {}),
        "vae.name": manifest.name,
        "vae.version": str(manifest.version),
        "vae.image": json.dumps(manifest.image.to_json(), sort_keys=True),
        "vae.latent": json.dumps(manifest.latent.to_json(), sort_keys=True),
        "vae.decoder_output": manifest.decoder_output,
        "vae.pairing_id": manifest.pairing_id,
        "vae.graph": graph,
    }
