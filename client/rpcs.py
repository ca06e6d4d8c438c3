"""The client methods, one per VaeService RPC, written once for both clients: request builder, reader.

Each method is an Rpc: the stub method it calls, the builder of its request (client/requests.py),
whose parameters are the method's, and the reader of its response (client/results.py). Rpcs, the
table of them, is the base of both transports; Blocking runs a call and returns its result, Aio
returns a coroutine (an async iterator for a stream). Adding an RPC is one line in Rpcs, and
tests/unit/test_client_methods.py fails until the proto's RPCs and these lines agree.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from functools import cached_property
from typing import Any, Generic, ParamSpec, TypeVar, overload

from google.protobuf.message import Message

from client import requests, results
from vae.v1 import vae_pb2_grpc
from wire.channel import call_metadata

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Rpc(Generic[P, T]):
    """One RPC as a client method: `build(*args, **kwargs)` is its request, `read` reads each response."""

    def __init__(
        self, method: str, build: Callable[P, Message], read: Callable[[Any], T], doc: str | None = None
    ) -> None:
        self.method = method
        self.build = build
        self.read = read
        self.__doc__ = doc or build.__doc__
        self.name = ""
        self._signatures: dict[str, inspect.Signature] = {}  # by return annotation, made once

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def bind(self, call: F, returns: str) -> F:
        """`call` as this method: its name, doc and signature (the builder's parameters, `returns`)."""
        if returns not in self._signatures:
            self._signatures[returns] = inspect.signature(self.build).replace(return_annotation=returns)
        call.__name__ = call.__qualname__ = self.name
        call.__doc__ = self.__doc__
        call.__signature__ = self._signatures[returns]  # type: ignore[attr-defined]
        return call

    @cached_property
    def result_type(self) -> str:
        return str(inspect.signature(self.read).return_annotation)


class Unary(Rpc[P, T]):
    """An RPC with one response: the method returns its result (Blocking) or a coroutine of it (Aio)."""

    @overload
    def __get__(self, client: None, owner: type) -> Unary[P, T]: ...
    @overload
    def __get__(self, client: Blocking, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: Aio, owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, client: Blocking | Aio | None, owner: type) -> Any:
        return self if client is None else client._unary(self)


class Streaming(Rpc[P, T]):
    """An RPC with a stream of responses: the method returns an iterator (Blocking) or an async one (Aio)."""

    @overload
    def __get__(self, client: None, owner: type) -> Streaming[P, T]: ...
    @overload
    def __get__(self, client: Blocking, owner: type) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, client: Aio, owner: type) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, client: Blocking | Aio | None, owner: type) -> Any:
        return self if client is None else client._streaming(self)


class Rpcs:
    """Every VaeService RPC as a method; `timeout` (seconds) is every call's deadline, None waits forever."""

    encode = Unary("Encode", requests.encode_request, results.encoded)
    decode = Unary("Decode", requests.decode_request, results.decoded)
    sample = Unary("Sample", requests.sample_request, results.generated)
    sample_stream = Streaming(
        "SampleStream",
        requests.sample_request,
        results.generated,
        "Chunks of images as the server sends them; together the same as sample() with that seed.",
    )
    reconstruct = Unary("Reconstruct", requests.reconstruct_request, results.reconstructed)
    interpolate = Unary("Interpolate", requests.interpolate_request, results.generated)
    score = Unary("Score", requests.score_request, results.scored)
    list_models = Unary("ListModels", requests.list_models_request, results.model_infos)
    model_info = Unary("GetModelInfo", requests.model_info_request, results.model_info)

    def __init__(self, stub: vae_pb2_grpc.VaeServiceStub, timeout: float | None, token: str | None) -> None:
        self._stub = stub
        self.timeout = timeout
        self._metadata = call_metadata(token)

    def _send(self, rpc: Rpc[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
        """The stub's call (or awaitable, or stream) of `rpc` with the request these arguments build."""
        stub_method = getattr(self._stub, rpc.method)
        return stub_method(rpc.build(*args, **kwargs), timeout=self.timeout, metadata=self._metadata)


class Blocking(Rpcs):
    """Runs each call to the end before returning."""

    def _unary(self, rpc: Unary[P, T]) -> Callable[P, T]:
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            return rpc.read(self._send(rpc, *args, **kwargs))

        return rpc.bind(call, rpc.result_type)

    def _streaming(self, rpc: Streaming[P, T]) -> Callable[P, Iterator[T]]:
        def call(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
            for response in self._send(rpc, *args, **kwargs):
                yield rpc.read(response)

        return rpc.bind(call, f"Iterator[{rpc.result_type}]")


class Aio(Rpcs):
    """asyncio: each call is awaited, each stream iterated with `async for`."""

    def _unary(self, rpc: Unary[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            return rpc.read(await self._send(rpc, *args, **kwargs))

        # As `async def` shows it: the awaited result.
        return rpc.bind(call, rpc.result_type)

    def _streaming(self, rpc: Streaming[P, T]) -> Callable[P, AsyncIterator[T]]:
        async def call(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
            async for response in self._send(rpc, *args, **kwargs):
                yield rpc.read(response)

        return rpc.bind(call, f"AsyncIterator[{rpc.result_type}]")
