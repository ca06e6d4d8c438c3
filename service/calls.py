"""One RPC's life around its handler: parse, admit, deadline, status, metrics, optional trailers.

The VaeService methods are registered with raw bytes in and out, so no interceptor sits on the
request path: bytes that are not a valid request message are answered INVALID_ARGUMENT here (grpc
itself would answer UNKNOWN, naming Python exception types), and the response is serialized once.
Per call this costs two perf_counter reads, one deadline read and five number updates for metrics.
Request ids, the access log and tracing (service/call_observer.py) are off by default; only when one
is on do calls read their metadata, and then they are ObservedCalls. What this module asks of that
observer (CallObserver) and what a call's server span reads of it (TracedCall) are protocols here,
so the modules above import this one and it imports none of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, NoReturn, Protocol

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from service.batch_types import Items
from service.batcher import Batcher
from service.errors import InvalidArgument, Unavailable, status_of
from service.memory import Trimmer
from service.metrics import MethodMetrics, Metrics
from vae.v1 import vae_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE = pb.DESCRIPTOR.services_by_name["VaeService"]
DRAINING = "the server is shutting down; retry on another replica"
# A client's deadline passes on its own clock before the server's (the request's transit), and it
# then cancels the call: a cancellation this close to the deadline is the deadline's.
DEADLINE_SLACK_S = 0.05


class Response(Protocol):
    """What a handler answers: a message, or service/codec.py's Reply, which writes its tensors itself."""

    def SerializeToString(self) -> bytes: ...  # protobuf's name


Handler = Callable[[Any, "Call"], Awaitable[Response]]
StreamHandler = Callable[[Any, "Call"], AsyncIterator[Response]]


class Drain:
    """What the server's drain reads: calls being answered, the last arrival, refusing or not.

    Refused calls get UNAVAILABLE, so that clients retry on another replica.
    """

    __slots__ = ("active", "draining", "last_arrival")

    def __init__(self) -> None:
        self.active = 0
        self.last_arrival = 0.0
        self.draining = False


class Call:
    """One RPC's deadline, item count and time spent waiting and computing, across batcher hops."""

    __slots__ = ("compute", "deadline", "expiry_counted", "items", "queue", "trace")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.items = 0
        self.queue = 0.0
        self.compute = 0.0
        self.trace: object | None = None  # the call's server span, when it is traced
        self.expiry_counted = False

    def first_expiry(self) -> bool:
        """True once: a call whose items expired in several batcher requests (Score's chunks) counts once."""
        first, self.expiry_counted = not self.expiry_counted, True
        return first

    async def run(self, batcher: Batcher, items: Items) -> tuple[np.ndarray, ...]:
        result = await batcher.submit(items, self.deadline, self.trace, self)
        self.queue += result.queue_seconds
        self.compute += result.compute_seconds
        return result.outputs

    def ended_code(self) -> str:
        """The status of a call grpc cancelled: its deadline passed, or the client went away."""
        expired = self.deadline is not None and time.perf_counter() >= self.deadline - DEADLINE_SLACK_S
        return "DEADLINE_EXCEEDED" if expired else "CANCELLED"

    def trailers(self) -> tuple[tuple[str, str], ...]:
        return (("x-queue-ms", f"{self.queue * 1e3:.3f}"), ("x-compute-ms", f"{self.compute * 1e3:.3f}"))

    def finished(self, method: MethodMetrics, code: str, started: float) -> float:
        """Count the call's end with status `code`; its duration in seconds."""
        seconds = time.perf_counter() - started
        method.finished(code, seconds, self.items if code == "OK" else 0)
        return seconds


class CallObserver(Protocol):
    """What observes calls when request ids, the access log or tracing is on (service/call_observer.py)."""

    def admit(self, method: str, context: Context, deadline: float | None) -> Call:
        """The Call for a call to `method` that has just arrived."""
        ...

    def unary(self, handler: Handler) -> Handler: ...
    def streaming(self, stream: StreamHandler) -> StreamHandler: ...


class TracedCall(Protocol):
    """What a call's server span records when it ends (service/tracing.py)."""

    @property
    def model(self) -> tuple[str, int]: ...  # (name, version) asked for, then that which answered
    @property
    def request_id(self) -> str: ...
    @property
    def items(self) -> int: ...
    @property
    def queue(self) -> float: ...
    @property
    def compute(self) -> float: ...


class Calls:
    """Builds the registered method handlers around the servicer's request -> response functions."""

    def __init__(
        self,
        metrics: Metrics,
        drain: Drain,
        *,
        timing_trailers: bool,
        max_deadline_s: float,
        observer: CallObserver | None = None,
    ) -> None:
        self._metrics = metrics
        self._drain = drain
        self._observer = observer
        self._max_deadline_s = max_deadline_s
        self._trimmer = Trimmer()
        # Observed calls may answer with x-request-id: their trailers() decide what they hold.
        self._trailing = timing_trailers or observer is not None

    def handlers(
        self, unary: dict[str, Handler], streaming: dict[str, StreamHandler]
    ) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """Every VaeService method, by name, as grpc wants it for add_registered_method_handlers."""
        found = {*unary, *streaming}
        expected = {method.name for method in SERVICE.methods}
        if found != expected:
            raise ValueError(f"handlers for {sorted(found)}, but the service has {sorted(expected)}")
        if self._observer is not None:
            unary = {name: self._observer.unary(handler) for name, handler in unary.items()}
            streaming = {name: self._observer.streaming(stream) for name, stream in streaming.items()}
        built: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, handler in unary.items():
            built[name] = grpc.unary_unary_rpc_method_handler(self._unary(name, handler))
        for name, stream in streaming.items():
            built[name] = grpc.unary_stream_rpc_method_handler(self._streaming(name, stream))
        return built

    def _parser(self, name: str) -> Callable[[bytes], Any]:
        kind = SERVICE.methods_by_name[name].input_type
        parse = getattr(pb, kind.name).FromString
        message = f"the request is not a valid {kind.full_name} message (protobuf wire format)"

        def parsed(raw: bytes) -> Any:
            try:
                return parse(raw)
            except DecodeError:
                raise InvalidArgument(message) from None

        return parsed

    def _admit(self, context: Context, started: float, name: str) -> Call:
        drain = self._drain
        drain.active += 1
        drain.last_arrival = started
        # The server's own bound applies to calls that set none, or a longer one.
        remaining = context.time_remaining()
        limit = self._max_deadline_s
        deadline = started + (limit if remaining is None else min(remaining, limit))
        if self._observer is None:
            return Call(deadline)
        return self._observer.admit(name, context, deadline)

    def _unary(self, name: str, handler: Handler) -> Callable[[bytes, Context], Awaitable[bytes]]:
        method, drain, parse = self._metrics.method(name), self._drain, self._parser(name)

        async def answer(raw: bytes, context: Context) -> bytes:
            started = time.perf_counter()
            method.in_flight.value += 1
            call = self._admit(context, started, name)
            data = b""
            try:
                if drain.draining:
                    raise Unavailable(DRAINING)
                data = (await handler(parse(raw), call)).SerializeToString()
            except asyncio.CancelledError:
                call.finished(method, call.ended_code(), started)
                raise
            except Exception as exc:
                await self._fail(method, call, started, context, exc)
            finally:
                drain.active -= 1
                self._trimmer.after(len(raw) + len(data))
            self._succeed(method, call, started, context)
            return data

        return answer

    def _streaming(
        self, name: str, stream: StreamHandler
    ) -> Callable[[bytes, Context], AsyncIterator[bytes]]:
        method, drain, parse = self._metrics.method(name), self._drain, self._parser(name)

        async def answer(raw: bytes, context: Context) -> AsyncIterator[bytes]:
            started = time.perf_counter()
            method.in_flight.value += 1
            call = self._admit(context, started, name)
            try:
                if drain.draining:
                    raise Unavailable(DRAINING)
                async for response in stream(parse(raw), call):
                    yield response.SerializeToString()
            except (asyncio.CancelledError, GeneratorExit):
                # GeneratorExit: grpc closes the stream when the client goes away.
                call.finished(method, call.ended_code(), started)
                raise
            except Exception as exc:
                await self._fail(method, call, started, context, exc)
            finally:
                drain.active -= 1
            self._succeed(method, call, started, context)

        return answer

    async def _fail(
        self, method: MethodMetrics, call: Call, started: float, context: Context, exc: Exception
    ) -> NoReturn:
        """Answer an exception with its status (context.abort raises, ending the handler)."""
        code, message = status_of(exc)
        # Recorded before answering: a client that saw the answer also sees it counted.
        call.finished(method, code.name, started)
        await context.abort(code, message, call.trailers() if self._trailing else ())

    def _succeed(self, method: MethodMetrics, call: Call, started: float, context: Context) -> None:
        if self._trailing:
            context.set_trailing_metadata(call.trailers())
        # Counted once grpc has sent the answer: a client that refused it (over its message limit),
        # cancelled or ran out of time meanwhile is counted as its call ended, not as OK.
        context.add_done_callback(partial(_delivered, method, call, started))  # type: ignore[arg-type]


def _delivered(method: MethodMetrics, call: Call, started: float, context: Context) -> None:
    call.finished(method, call.ended_code() if context.cancelled() else "OK", started)
