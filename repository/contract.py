"""The graph contract: the tensors every encoder and decoder take and give, and each graph's metadata.

Export builds graphs to it and verify checks them against it; imports neither torch nor onnx.
"""

from __future__ import annotations

import json

from repository.manifest import (
    BATCH_AXIS,
    IMAGES,
    LABEL_DTYPE,
    LABELS,
    LATENTS,
    LOGITS,
    LOGVAR,
    MU,
    PROBS,
    Shape,
    TensorInfo,
)


def graph_contract(
    latent_dim: int, image_shape: tuple[int, int, int], likelihood: str, *, conditional: bool = False
) -> dict[str, tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]]:
    """The inputs and outputs every encoder and decoder must have: {graph: (inputs, outputs)}.

    A conditional model's graphs both take the class index LABELS as their second input.
    """
    image: Shape = (BATCH_AXIS, *image_shape)
    latent: Shape = (BATCH_AXIS, latent_dim)
    labels = (TensorInfo(name=LABELS, dtype=LABEL_DTYPE, shape=(BATCH_AXIS,)),) if conditional else ()
    decoder_outputs = [TensorInfo(name=PROBS, dtype="float32", shape=image)]
    if likelihood == "bernoulli":
        decoder_outputs.append(TensorInfo(name=LOGITS, dtype="float32", shape=image))
    return {
        "encoder": (
            (TensorInfo(name=IMAGES, dtype="float32", shape=image), *labels),
            (
                TensorInfo(name=MU, dtype="float32", shape=latent),
                TensorInfo(name=LOGVAR, dtype="float32", shape=latent),
            ),
        ),
        "decoder": (
            (TensorInfo(name=LATENTS, dtype="float32", shape=latent), *labels),
            tuple(decoder_outputs),
        ),
    }


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
