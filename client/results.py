"""What the clients return: one frozen dataclass per kind of response, and the readers that fill them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vae.v1 import vae_pb2 as pb
from wire.tensors import to_numpy


@dataclass(frozen=True)
class Encoded:
    model: tuple[str, int]
    mu: np.ndarray  # [n, D]
    logvar: np.ndarray  # [n, D]
    z: np.ndarray | None  # [n, k, D] when samples were asked for


@dataclass(frozen=True)
class Decoded:
    model: tuple[str, int]
    images: np.ndarray  # [n, C, H, W], float32 in [0, 1] or uint8


@dataclass(frozen=True)
class Generated:
    """Sampled or interpolated images and the latents they were decoded from."""

    model: tuple[str, int]
    images: np.ndarray  # [n, C, H, W], float32 in [0, 1] or uint8
    latents: np.ndarray  # [n, D]


@dataclass(frozen=True)
class Reconstructed:
    model: tuple[str, int]
    images: np.ndarray  # [n, C, H, W]
    error: np.ndarray  # [n]: mean squared error per image


@dataclass(frozen=True)
class Scored:
    """Per image, float32: nats for the first three, mean squared pixel error for the last."""

    model: tuple[str, int]
    log_likelihood: np.ndarray  # [n]: the importance-weighted bound with k samples
    elbo: np.ndarray  # [n]
    kl: np.ndarray  # [n]
    reconstruction_error: np.ndarray  # [n]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    versions: tuple[int, ...]
    is_default: bool
    latent_dim: int
    image_shape: tuple[int, ...]
    likelihood: str
    provider: str
    pairing_id: str
    created: str
    max_batch_items: int
    max_request_items: int
    classes: tuple[str, ...]  # a conditional model's class names, label i is classes[i]; else empty
    prior: str  # "normal", "mixture" or "vamp"; "" from a server older than learned priors
    # Contract version 2 (docs/api.md); zeros and empties from a server older than it.
    image_channels: int = 0
    image_size: tuple[int, ...] = ()  # (H, W); empty: any multiple of image_multiple_of
    image_multiple_of: int = 0
    value_range: tuple[float, ...] = ()  # (low, high)
    latent_channels: int = 0
    latent_downsampling: int = 0  # 0: a flat latent [latent_channels]
    scaling_factor: float = 0.0
    shift_factor: float = 0.0
    decoder_output: str = ""
    has_prior: bool = False
    scorable: bool = False
    prior_flow_layers: int = 0  # a normalizing flow on the prior; 0: none (or a server older than flows)


def _model(ref: pb.ModelRef) -> tuple[str, int]:
    return ref.name, ref.version


def encoded(response: pb.EncodeResponse) -> Encoded:
    return Encoded(
        _model(response.model),
        to_numpy(response.mu, "mu"),
        to_numpy(response.logvar, "logvar"),
        to_numpy(response.z, "z") if response.HasField("z") else None,
    )


def decoded(response: pb.DecodeResponse) -> Decoded:
    return Decoded(_model(response.model), to_numpy(response.images, "images"))


def generated(response: pb.SampleResponse | pb.InterpolateResponse) -> Generated:
    images, latents = to_numpy(response.images, "images"), to_numpy(response.latents, "latents")
    return Generated(_model(response.model), images, latents)


def reconstructed(response: pb.ReconstructResponse) -> Reconstructed:
    return Reconstructed(
        _model(response.model), to_numpy(response.images, "images"), to_numpy(response.error, "error")
    )


def scored(response: pb.ScoreResponse) -> Scored:
    return Scored(
        _model(response.model),
        to_numpy(response.log_likelihood, "log_likelihood"),
        to_numpy(response.elbo, "elbo"),
        to_numpy(response.kl, "kl"),
        to_numpy(response.reconstruction_error, "reconstruction_error"),
    )


def model_info(info: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=info.name,
        version=info.version,
        versions=tuple(info.versions),
        is_default=info.is_default,
        latent_dim=info.latent_dim,
        image_shape=tuple(info.image_shape),
        likelihood=info.likelihood,
        provider=info.provider,
        pairing_id=info.pairing_id,
        created=info.created,
        max_batch_items=info.max_batch_items,
        max_request_items=info.max_request_items,
        classes=tuple(info.classes),
        prior=info.prior,
        image_channels=info.image_channels,
        image_size=tuple(info.image_size),
        image_multiple_of=info.image_multiple_of,
        value_range=tuple(info.value_range),
        latent_channels=info.latent_channels,
        latent_downsampling=info.latent_downsampling,
        scaling_factor=info.scaling_factor,
        shift_factor=info.shift_factor,
        decoder_output=info.decoder_output,
        has_prior=info.has_prior,
        scorable=info.scorable,
        prior_flow_layers=info.prior_flow_layers,
    )


def model_infos(response: pb.ListModelsResponse) -> list[ModelInfo]:
    return [model_info(info) for info in response.models]
