"""Typed Python clients for vae.v1.VaeService, blocking and asyncio, speaking numpy arrays.

    with VaeClient("localhost:50051") as client:
        images = client.sample(16, seed=0).images          # float32 [16, C, H, W] in [0, 1]

    async with AsyncVaeClient("localhost:50051") as client:
        mu = (await client.encode(images)).mu

Failed calls raise grpc.RpcError; `.code()` is the status (docs/api.md lists them).
Both clients build requests and read responses with the same functions, so they cannot drift apart.
Both spread calls over every address the target resolves to and retry UNAVAILABLE (SERVICE_CONFIG);
`credentials` turns on TLS (grpc.ssl_channel_credentials) and `token` sends a bearer token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import grpc
import numpy as np

from service import codec
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
ImageDType = Literal["float32", "uint8"]
Method = Literal["linear", "spherical"]
_OUTPUT_DTYPES = {"float32": pb.DTYPE_FLOAT32, "uint8": pb.DTYPE_UINT8}
_METHODS = {"linear": pb.INTERPOLATION_METHOD_LINEAR, "spherical": pb.INTERPOLATION_METHOD_SPHERICAL}


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


# --- requests and responses, shared by both clients -----------------------------------------------


def images_tensor(images: np.ndarray) -> pb.Tensor:
    """uint8 images go as they are (a quarter of the bytes); anything else as float32."""
    array = np.asarray(images)
    return codec.tensor(array if array.dtype == np.uint8 else array.astype(np.float32, copy=False))


def _ref(model: str, version: int) -> pb.ModelRef:
    return pb.ModelRef(name=model, version=version)


def _model(ref: pb.ModelRef) -> tuple[str, int]:
    return ref.name, ref.version


def encode_request(
    images: np.ndarray, samples: int, seed: int | None, model: str, version: int
) -> pb.EncodeRequest:
    return pb.EncodeRequest(
        model=_ref(model, version), images=images_tensor(images), samples=samples, seed=seed
    )


def encoded(response: pb.EncodeResponse) -> Encoded:
    return Encoded(
        _model(response.model),
        codec.to_numpy(response.mu, "mu"),
        codec.to_numpy(response.logvar, "logvar"),
        codec.to_numpy(response.z, "z") if response.HasField("z") else None,
    )


def decode_request(
    latents: np.ndarray, output_dtype: ImageDType, model: str, version: int
) -> pb.DecodeRequest:
    return pb.DecodeRequest(
        model=_ref(model, version),
        latents=codec.tensor(np.asarray(latents, dtype=np.float32)),
        output_dtype=_OUTPUT_DTYPES[output_dtype],
    )


def sample_request(
    n: int, seed: int | None, temperature: float | None, output_dtype: ImageDType, model: str, version: int
) -> pb.SampleRequest:
    return pb.SampleRequest(
        model=_ref(model, version),
        n=n,
        seed=seed,
        temperature=temperature,
        output_dtype=_OUTPUT_DTYPES[output_dtype],
    )


def decoded(response: pb.DecodeResponse) -> Decoded:
    return Decoded(_model(response.model), codec.to_numpy(response.images, "images"))


def generated(response: pb.SampleResponse | pb.InterpolateResponse) -> Generated:
    images, latents = codec.to_numpy(response.images, "images"), codec.to_numpy(response.latents, "latents")
    return Generated(_model(response.model), images, latents)


def reconstruct_request(
    images: np.ndarray, output_dtype: ImageDType, model: str, version: int
) -> pb.ReconstructRequest:
    return pb.ReconstructRequest(
        model=_ref(model, version), images=images_tensor(images), output_dtype=_OUTPUT_DTYPES[output_dtype]
    )


def reconstructed(response: pb.ReconstructResponse) -> Reconstructed:
    return Reconstructed(
        _model(response.model),
        codec.to_numpy(response.images, "images"),
        codec.to_numpy(response.error, "error"),
    )


def interpolate_request(
    start: np.ndarray,
    end: np.ndarray,
    steps: int,
    method: Method,
    output_dtype: ImageDType,
    model: str,
    version: int,
) -> pb.InterpolateRequest:
    """Endpoints of rank 1 are latents [D]; of rank 3 images [C, H, W]."""
    ends = np.stack([np.asarray(start), np.asarray(end)])
    request = pb.InterpolateRequest(
        model=_ref(model, version),
        steps=steps,
        method=_METHODS[method],
        output_dtype=_OUTPUT_DTYPES[output_dtype],
    )
    if ends.ndim == 2:
        request.latents.CopyFrom(codec.tensor(ends.astype(np.float32)))
    elif ends.ndim == 4:
        request.images.CopyFrom(images_tensor(ends))
    else:
        raise ValueError(
            f"endpoints must both be latents [D] or images [C, H, W], got shape {list(ends.shape[1:])}"
        )
    return request


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
    )


# The channel's service config (gRFC A6 retries; docs/reliability.md and docs/api.md explain it).
# round_robin: calls go to every address the target resolves to (ipv4:HOST:PORT,HOST:PORT, or a
# headless Service's pods), skipping those that are down. The retry policy sends a call that ended
# UNAVAILABLE again, after a backoff, up to 5 attempts in all: UNAVAILABLE means it never ran (a
# draining server refused it, a replica or connection went away, a balancer found no backend),
# and every RPC here computes a pure function of its request, so a second attempt is safe.
# RESOURCE_EXHAUSTED (back off: the server is full) and DEADLINE_EXCEEDED (time is up) are final.
# gRPC buffers at most 256 KiB of a request for retrying; larger requests are not retried.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": "vae.v1.VaeService"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def _options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
    ]


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


# --- the clients ----------------------------------------------------------------------------------


class VaeClient:
    """Blocking client. `timeout` (seconds) is every call's deadline; None waits forever."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        options = _options(max_message_bytes)
        self._channel = channel or (
            grpc.secure_channel(target, credentials, options)
            if credentials
            else grpc.insecure_channel(target, options)
        )
        # grpcio-tools writes no type stubs for the service; the message types are typed (.pyi).
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self._metadata = _metadata(token)

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def encode(
        self,
        images: np.ndarray,
        *,
        samples: int = 0,
        seed: int | None = None,
        model: str = "",
        version: int = 0,
    ) -> Encoded:
        request = encode_request(images, samples, seed, model, version)
        return encoded(self._stub.Encode(request, timeout=self.timeout, metadata=self._metadata))

    def decode(
        self, latents: np.ndarray, *, output_dtype: ImageDType = "float32", model: str = "", version: int = 0
    ) -> Decoded:
        request = decode_request(latents, output_dtype, model, version)
        return decoded(self._stub.Decode(request, timeout=self.timeout, metadata=self._metadata))

    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        temperature: float | None = None,
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
    ) -> Generated:
        request = sample_request(n, seed, temperature, output_dtype, model, version)
        return generated(self._stub.Sample(request, timeout=self.timeout, metadata=self._metadata))

    def sample_stream(
        self,
        n: int,
        *,
        seed: int | None = None,
        temperature: float | None = None,
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
    ) -> Iterator[Generated]:
        """Chunks of images as the server sends them; together the same as sample() with that seed."""
        request = sample_request(n, seed, temperature, output_dtype, model, version)
        for response in self._stub.SampleStream(request, timeout=self.timeout, metadata=self._metadata):
            yield generated(response)

    def reconstruct(
        self, images: np.ndarray, *, output_dtype: ImageDType = "float32", model: str = "", version: int = 0
    ) -> Reconstructed:
        request = reconstruct_request(images, output_dtype, model, version)
        return reconstructed(self._stub.Reconstruct(request, timeout=self.timeout, metadata=self._metadata))

    def interpolate(
        self,
        start: np.ndarray,
        end: np.ndarray,
        *,
        steps: int = 8,
        method: Method = "linear",
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
    ) -> Generated:
        request = interpolate_request(start, end, steps, method, output_dtype, model, version)
        return generated(self._stub.Interpolate(request, timeout=self.timeout, metadata=self._metadata))

    def list_models(self) -> list[ModelInfo]:
        response = self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return [model_info(info) for info in response.models]

    def model_info(self, model: str = "", version: int = 0) -> ModelInfo:
        request = pb.GetModelInfoRequest(model=_ref(model, version))
        return model_info(self._stub.GetModelInfo(request, timeout=self.timeout, metadata=self._metadata))


class AsyncVaeClient:
    """asyncio client; the same methods as VaeClient, awaited."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        options = _options(max_message_bytes)
        self._channel = channel or (
            grpc.aio.secure_channel(target, credentials, options)
            if credentials
            else grpc.aio.insecure_channel(target, options)
        )
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self._metadata = _metadata(token)

    async def __aenter__(self) -> AsyncVaeClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def encode(
        self,
        images: np.ndarray,
        *,
        samples: int = 0,
        seed: int | None = None,
        model: str = "",
        version: int = 0,
    ) -> Encoded:
        request = encode_request(images, samples, seed, model, version)
        return encoded(await self._stub.Encode(request, timeout=self.timeout, metadata=self._metadata))

    async def decode(
        self, latents: np.ndarray, *, output_dtype: ImageDType = "float32", model: str = "", version: int = 0
    ) -> Decoded:
        request = decode_request(latents, output_dtype, model, version)
        return decoded(await self._stub.Decode(request, timeout=self.timeout, metadata=self._metadata))

    async def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        temperature: float | None = None,
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
    ) -> Generated:
        request = sample_request(n, seed, temperature, output_dtype, model, version)
        return generated(await self._stub.Sample(request, timeout=self.timeout, metadata=self._metadata))

    async def sample_stream(
        self,
        n: int,
        *,
        seed: int | None = None,
        temperature: float | None = None,
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
    ) -> AsyncIterator[Generated]:
        request = sample_request(n, seed, temperature, output_dtype, model, version)
        async for response in self._stub.SampleStream(request, timeout=self.timeout, metadata=self._metadata):
            yield generated(response)

    async def reconstruct(
        self, images: np.ndarray, *, output_dtype: ImageDType = "float32", model: str = "", version: int = 0
    ) -> Reconstructed:
        request = reconstruct_request(images, output_dtype, model, version)
        return reconstructed(
            await self._stub.Reconstruct(request, timeout=self.timeout, metadata=self._metadata)
        )

    async def interpolate(
        self,
        start: np.ndarray,
        end: np.ndarray,
        *,
        steps: int = 8,
        method: Method = "linear",
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
    ) -> Generated:
        request = interpolate_request(start, end, steps, method, output_dtype, model, version)
        return generated(await self._stub.Interpolate(request, timeout=self.timeout, metadata=self._metadata))

    async def list_models(self) -> list[ModelInfo]:
        response = await self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return [model_info(info) for info in response.models]

    async def model_info(self, model: str = "", version: int = 0) -> ModelInfo:
        request = pb.GetModelInfoRequest(model=_ref(model, version))
        return model_info(
            await self._stub.GetModelInfo(request, timeout=self.timeout, metadata=self._metadata)
        )
