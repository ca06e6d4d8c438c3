"""vae.v1 requests built from numpy arrays, by both clients and by the benchmarks.

Each builder's parameters are its client method's (client/rpcs.py): defaults included, one source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from vae.v1 import vae_pb2 as pb
from wire.tensors import tensor

ImageDType = Literal["float32", "uint8"]
Method = Literal["linear", "spherical"]
_OUTPUT_DTYPES = {"float32": pb.DTYPE_FLOAT32, "uint8": pb.DTYPE_UINT8}
_METHODS = {"linear": pb.INTERPOLATION_METHOD_LINEAR, "spherical": pb.INTERPOLATION_METHOD_SPHERICAL}
# A conditional model's class indices: one per item, or one int for every item; None for an
# unconditional model.
Labels = int | Sequence[int] | np.ndarray | None


def _labels(labels: Labels) -> list[int] | None:
    # Python ints as they are: protobuf itself refuses floats and values outside uint32.
    return None if labels is None else np.atleast_1d(labels).tolist()


def images_tensor(images: np.ndarray) -> pb.Tensor:
    """uint8 images go as they are (a quarter of the bytes); anything else as float32."""
    array = np.asarray(images)
    return tensor(array if array.dtype == np.uint8 else array.astype(np.float32, copy=False))


def model_ref(model: str, version: int) -> pb.ModelRef:
    return pb.ModelRef(name=model, version=version)


def list_models_request() -> pb.ListModelsRequest:
    """Every loaded model version."""
    return pb.ListModelsRequest()


def model_info_request(model: str = "", version: int = 0) -> pb.GetModelInfoRequest:
    """One model version's shapes, classes, provider and limits."""
    return pb.GetModelInfoRequest(model=model_ref(model, version))


def encode_request(
    images: np.ndarray,
    *,
    samples: int = 0,
    seed: int | None = None,
    model: str = "",
    version: int = 0,
    labels: Labels = None,
    scaled: bool = False,
) -> pb.EncodeRequest:
    """`scaled`: latents as a diffusion pipeline uses them, (z - shift_factor) * scaling_factor."""
    return pb.EncodeRequest(
        model=model_ref(model, version),
        images=images_tensor(images),
        samples=samples,
        seed=seed,
        labels=_labels(labels),
        scaled=scaled,
    )


def decode_request(
    latents: np.ndarray,
    *,
    output_dtype: ImageDType = "float32",
    model: str = "",
    version: int = 0,
    labels: Labels = None,
    scaled: bool = False,
) -> pb.DecodeRequest:
    """Latents [n, D] or spatial [n, C, h, w]; `scaled`: a diffusion pipeline's (the server unscales)."""
    return pb.DecodeRequest(
        model=model_ref(model, version),
        latents=tensor(np.asarray(latents, dtype=np.float32)),
        output_dtype=_OUTPUT_DTYPES[output_dtype],
        labels=_labels(labels),
        scaled=scaled,
    )


def sample_request(
    n: int,
    *,
    seed: int | None = None,
    temperature: float | None = None,
    output_dtype: ImageDType = "float32",
    model: str = "",
    version: int = 0,
    labels: Labels = None,
    height: int = 0,
    width: int = 0,
) -> pb.SampleRequest:
    """`height`, `width`: the image size, for a model that takes any size (0: its fixed size)."""
    return pb.SampleRequest(
        model=model_ref(model, version),
        n=n,
        seed=seed,
        temperature=temperature,
        output_dtype=_OUTPUT_DTYPES[output_dtype],
        labels=_labels(labels),
        height=height,
        width=width,
    )


def reconstruct_request(
    images: np.ndarray,
    *,
    output_dtype: ImageDType = "float32",
    model: str = "",
    version: int = 0,
    labels: Labels = None,
) -> pb.ReconstructRequest:
    return pb.ReconstructRequest(
        model=model_ref(model, version),
        images=images_tensor(images),
        output_dtype=_OUTPUT_DTYPES[output_dtype],
        labels=_labels(labels),
    )


def score_request(
    images: np.ndarray,
    *,
    samples: int = 64,
    seed: int | None = None,
    model: str = "",
    version: int = 0,
    labels: Labels = None,
) -> pb.ScoreRequest:
    """Per-image log-likelihood with `samples` importance samples (1: the ELBO), ELBO, KL, error.

    The samples' draws are shared by all images (seeded: PCG64(seed)), so an image's numbers do not
    depend on which other images it was sent with. A conditional model scores each image under its
    label.
    """
    return pb.ScoreRequest(
        model=model_ref(model, version),
        images=images_tensor(images),
        samples=samples,
        seed=seed,
        labels=_labels(labels),
    )


def interpolate_request(
    start: np.ndarray,
    end: np.ndarray,
    *,
    steps: int = 8,
    method: Method = "linear",
    output_dtype: ImageDType = "float32",
    model: str = "",
    version: int = 0,
    label: int | None = None,
    latents: bool = False,
) -> pb.InterpolateRequest:
    """Endpoints: latents [D], images [C, H, W], or spatial latents [C, h, w] with `latents` set.

    `label`: the path's class.
    """
    ends = np.stack([np.asarray(start), np.asarray(end)])
    request = pb.InterpolateRequest(
        model=model_ref(model, version),
        steps=steps,
        method=_METHODS[method],
        output_dtype=_OUTPUT_DTYPES[output_dtype],
        labels=_labels(label),
    )
    if ends.ndim == 2 or latents:
        request.latents.CopyFrom(tensor(ends.astype(np.float32)))
    elif ends.ndim == 4:
        request.images.CopyFrom(images_tensor(ends))
    else:
        raise ValueError(
            f"endpoints must both be latents [D] or images [C, H, W], got shape {list(ends.shape[1:])}"
        )
    return request
