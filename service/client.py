"""Typed Python clients for vae.v1.VaeService, blocking and asyncio, speaking numpy arrays.

    with VaeClient("localhost:50051") as client:
        images = client.sample(16, seed=0).images          # float32 [16, C, H, W] in [0, 1]

    async with AsyncVaeClient("localhost:50051") as client:
        mu = (await client.encode(images)).mu

Failed calls raise grpc.RpcError; `.code()` is the status (docs/api.md lists them). A conditional
model (ModelInfo.classes) takes `labels`: one class index per item, or one int for every item
(interpolate: one `label`, the class of the whole path).
Both clients build requests and read responses with the same functions (service/requests.py,
service/results.py), so they cannot drift apart. Both spread calls over every address the target
resolves to and retry UNAVAILABLE (service/channel.py, SERVICE_CONFIG);
`credentials` turns on TLS (grpc.ssl_channel_credentials) and `token` sends a bearer token.
In an application that traces, each call continues its current span (service/client_tracing.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType

import grpc
import numpy as np

from service.channel import DEFAULT_MAX_MESSAGE_BYTES, call_metadata, channel_options
from service.client_tracing import aio_interceptors, traced
from service.requests import (
    ImageDType,
    Labels,
    Method,
    decode_request,
    encode_request,
    interpolate_request,
    model_ref,
    reconstruct_request,
    sample_request,
    score_request,
)
from service.results import (
    Decoded,
    Encoded,
    Generated,
    ModelInfo,
    Reconstructed,
    Scored,
    decoded,
    encoded,
    generated,
    model_info,
    reconstructed,
    scored,
)
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

# The clients' interface: what their methods take and return. The request builders are here too
# because the benchmarks send exactly the requests the clients would (benchmarks/workloads.py).
__all__ = [
    "AsyncVaeClient",
    "Decoded",
    "Encoded",
    "Generated",
    "ImageDType",
    "Labels",
    "Method",
    "ModelInfo",
    "Reconstructed",
    "Scored",
    "VaeClient",
    "decode_request",
    "encode_request",
    "reconstruct_request",
    "sample_request",
]


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
        options = channel_options(max_message_bytes)
        self._channel = channel or (
            grpc.secure_channel(target, credentials, options)
            if credentials
            else grpc.insecure_channel(target, options)
        )
        self._stub = vae_pb2_grpc.VaeServiceStub(traced(self._channel))
        self.timeout = timeout
        self._metadata = call_metadata(token)

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
        labels: Labels = None,
    ) -> Encoded:
        request = encode_request(images, samples, seed, model, version, labels)
        return encoded(self._stub.Encode(request, timeout=self.timeout, metadata=self._metadata))

    def decode(
        self,
        latents: np.ndarray,
        *,
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
        labels: Labels = None,
    ) -> Decoded:
        request = decode_request(latents, output_dtype, model, version, labels)
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
        labels: Labels = None,
    ) -> Generated:
        request = sample_request(n, seed, temperature, output_dtype, model, version, labels)
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
        labels: Labels = None,
    ) -> Iterator[Generated]:
        """Chunks of images as the server sends them; together the same as sample() with that seed."""
        request = sample_request(n, seed, temperature, output_dtype, model, version, labels)
        for response in self._stub.SampleStream(request, timeout=self.timeout, metadata=self._metadata):
            yield generated(response)

    def reconstruct(
        self,
        images: np.ndarray,
        *,
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
        labels: Labels = None,
    ) -> Reconstructed:
        request = reconstruct_request(images, output_dtype, model, version, labels)
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
        label: int | None = None,
    ) -> Generated:
        request = interpolate_request(start, end, steps, method, output_dtype, model, version, label)
        return generated(self._stub.Interpolate(request, timeout=self.timeout, metadata=self._metadata))

    def score(
        self,
        images: np.ndarray,
        *,
        samples: int = 64,
        seed: int | None = None,
        model: str = "",
        version: int = 0,
        labels: Labels = None,
    ) -> Scored:
        """Per-image log-likelihood with `samples` importance samples (1: the ELBO), ELBO, KL, error.

        The samples' draws are shared by all images (seeded: PCG64(seed)), so an image's numbers do not
        depend on which other images it was sent with. A conditional model scores each image under its
        label.
        """
        request = score_request(images, samples, seed, model, version, labels)
        return scored(self._stub.Score(request, timeout=self.timeout, metadata=self._metadata))

    def list_models(self) -> list[ModelInfo]:
        response = self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return [model_info(info) for info in response.models]

    def model_info(self, model: str = "", version: int = 0) -> ModelInfo:
        request = pb.GetModelInfoRequest(model=model_ref(model, version))
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
        options = channel_options(max_message_bytes)
        interceptors = aio_interceptors()  # a channel passed in keeps its own
        self._channel = channel or (
            grpc.aio.secure_channel(target, credentials, options, interceptors=interceptors)
            if credentials
            else grpc.aio.insecure_channel(target, options, interceptors=interceptors)
        )
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)
        self.timeout = timeout
        self._metadata = call_metadata(token)

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
        labels: Labels = None,
    ) -> Encoded:
        request = encode_request(images, samples, seed, model, version, labels)
        return encoded(await self._stub.Encode(request, timeout=self.timeout, metadata=self._metadata))

    async def decode(
        self,
        latents: np.ndarray,
        *,
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
        labels: Labels = None,
    ) -> Decoded:
        request = decode_request(latents, output_dtype, model, version, labels)
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
        labels: Labels = None,
    ) -> Generated:
        request = sample_request(n, seed, temperature, output_dtype, model, version, labels)
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
        labels: Labels = None,
    ) -> AsyncIterator[Generated]:
        request = sample_request(n, seed, temperature, output_dtype, model, version, labels)
        async for response in self._stub.SampleStream(request, timeout=self.timeout, metadata=self._metadata):
            yield generated(response)

    async def reconstruct(
        self,
        images: np.ndarray,
        *,
        output_dtype: ImageDType = "float32",
        model: str = "",
        version: int = 0,
        labels: Labels = None,
    ) -> Reconstructed:
        request = reconstruct_request(images, output_dtype, model, version, labels)
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
        label: int | None = None,
    ) -> Generated:
        request = interpolate_request(start, end, steps, method, output_dtype, model, version, label)
        return generated(await self._stub.Interpolate(request, timeout=self.timeout, metadata=self._metadata))

    async def score(
        self,
        images: np.ndarray,
        *,
        samples: int = 64,
        seed: int | None = None,
        model: str = "",
        version: int = 0,
        labels: Labels = None,
    ) -> Scored:
        request = score_request(images, samples, seed, model, version, labels)
        return scored(await self._stub.Score(request, timeout=self.timeout, metadata=self._metadata))

    async def list_models(self) -> list[ModelInfo]:
        response = await self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return [model_info(info) for info in response.models]

    async def model_info(self, model: str = "", version: int = 0) -> ModelInfo:
        request = pb.GetModelInfoRequest(model=model_ref(model, version))
        return model_info(
            await self._stub.GetModelInfo(request, timeout=self.timeout, metadata=self._metadata)
        )
