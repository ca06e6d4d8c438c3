"""Both Python clients have one method per VaeService RPC, with the same parameters, from one table."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator

import pytest

from client.clients import AsyncVaeClient, VaeClient
from client.rpcs import Rpc, Streaming
from vae.v1 import vae_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["VaeService"]
# What a client has besides its RPCs: its lifetime and its deadline.
NOT_RPCS = {"close", "timeout"}


def _methods(client: type) -> dict[str, Rpc[..., object]]:
    """The client's public methods by name, each the RPC it calls; a method that is no Rpc fails."""
    names = {name for name in dir(client) if not name.startswith("_")} - NOT_RPCS
    methods = {name: inspect.getattr_static(client, name) for name in names}
    assert {name: type(m).__name__ for name, m in methods.items() if not isinstance(m, Rpc)} == {}
    return methods


@pytest.mark.parametrize("client", [VaeClient, AsyncVaeClient])
def test_every_rpc_of_the_proto_is_one_client_method(client: type) -> None:
    called = sorted(rpc.method for rpc in _methods(client).values())
    assert called == sorted(method.name for method in SERVICE.methods)
    streams = {rpc.method for rpc in _methods(client).values() if isinstance(rpc, Streaming)}
    assert streams == {method.name for method in SERVICE.methods if method.server_streaming}


@pytest.fixture
def clients() -> Iterator[tuple[VaeClient, AsyncVaeClient]]:
    # Channels connect lazily: nothing listens at these targets, and nothing is called.
    async def make() -> AsyncVaeClient:
        return AsyncVaeClient("localhost:1")

    loop = asyncio.new_event_loop()
    aio = loop.run_until_complete(make())
    with VaeClient("localhost:1") as blocking:
        yield blocking, aio
    loop.run_until_complete(aio.close())
    loop.close()


def test_the_blocking_and_async_methods_have_the_same_signatures(
    clients: tuple[VaeClient, AsyncVaeClient],
) -> None:
    blocking, aio = clients
    assert sorted(_methods(VaeClient)) == sorted(_methods(AsyncVaeClient))
    for name, rpc in _methods(VaeClient).items():
        signatures = inspect.signature(getattr(blocking, name)), inspect.signature(getattr(aio, name))
        assert signatures[0].parameters == signatures[1].parameters, name
        assert list(signatures[0].parameters) == list(inspect.signature(rpc.build).parameters), name
        if not isinstance(rpc, Streaming):
            assert signatures[0] == signatures[1], name
    assert inspect.iscoroutinefunction(aio.encode) and inspect.isasyncgenfunction(aio.sample_stream)
    assert inspect.isgeneratorfunction(blocking.sample_stream)
    assert blocking.score.__doc__ == aio.score.__doc__
    assert "importance samples" in (blocking.score.__doc__ or "")
