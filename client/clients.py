"""Typed Python clients for vae.v1.VaeService, blocking and asyncio, speaking numpy arrays.

    with VaeClient("localhost:50051") as client:
        images = client.sample(16, seed=0).images          # float32 [16, C, H, W] in [0, 1]

    async with AsyncVaeClient("localhost:50051") as client:
        mu = (await client.encode(images)).mu

Failed calls raise grpc.RpcError; `.code()` is the status (docs/api.md lists them). A conditional
model (ModelInfo.classes) takes `labels`: one class index per item, or one int for every item
(interpolate: one `label`, the class of the whole path).
Both clients take their methods from one table (client/rpcs.py): the same request builders
(client/requests.py) and response readers (client/results.py), so they cannot drift apart. Both
spread calls over every address the target resolves to and retry UNAVAILABLE (wire/channel.py,
SERVICE_CONFIG); `credentials` turns on TLS (grpc.ssl_channel_credentials) and `token` sends a
bearer token. In an application that traces, each call continues its current span (client/tracing.py).
"""

from __future__ import annotations

from types import TracebackType

import grpc

from client.rpcs import Aio, Blocking
from client.tracing import aio_interceptors, traced
from vae.v1 import vae_pb2_grpc
from wire.channel import DEFAULT_MAX_MESSAGE_BYTES, channel_options


class VaeClient(Blocking):
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
        super().__init__(vae_pb2_grpc.VaeServiceStub(traced(self._channel)), timeout, token)

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()


class AsyncVaeClient(Aio):
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
        super().__init__(vae_pb2_grpc.VaeServiceStub(self._channel), timeout, token)

    async def __aenter__(self) -> AsyncVaeClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)
