"""Calls with request ids, an access log or traces: what each does at its start and end, when asked to.

All three are off by default, and then service/calls.py answers with plain Calls: nothing here runs,
no metadata is read, nothing is logged per call, no span is made. With any of them on, each call:

- reads its metadata once: `x-request-id` (kept when it is 1..128 printable ASCII characters without
  spaces, else replaced) and, when tracing, the W3C trace context (`traceparent`, `tracestate`);
- makes an id only when something needs one (a log line, a span, the answer), 16 random hex digits;
- answers with `x-request-id` in its trailing metadata when the client sent one, or always when the
  access log or tracing is on (so the client can quote it to whoever reads the log or the traces);
- tags every log record written while it is answered (service/logs.py), and at its end writes an
  access line (every failed call; successful ones with probability --access-log-sample) and ends
  its server span (service/tracing.py).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Protocol, cast

from service.calls import Call, Context, Handler, StreamHandler, TracedCall
from service.config import ServiceConfig
from service.logs import ACCESS_LOGGER, CURRENT_CALL
from service.metrics import MethodMetrics

if TYPE_CHECKING:  # the `tracing` extra's API, present only where tracing is on
    from opentelemetry.trace import Span

REQUEST_ID_KEY = "x-request-id"
_VALID_ID = re.compile(r"[!-~]{1,128}")

access = logging.getLogger(ACCESS_LOGGER)


class CallTracer(Protocol):
    """What observed calls need of tracing (service/tracing.py's Tracing): a server span per call."""

    def start(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> Span: ...
    def end(self, span: Span, call: TracedCall, code: str) -> None: ...


class Observer:
    """One server's settings for observed calls; `for_config` is None when every one of them is off."""

    def __init__(
        self, *, timing_trailers: bool, access_log_sample: float, tracing: CallTracer | None
    ) -> None:
        self.timing_trailers = timing_trailers
        self.access_log_sample = access_log_sample
        self.tracing = tracing
        # Logged or traced calls always answer with their id: it is what finds them again.
        self.always_id = bool(access_log_sample) or tracing is not None

    @classmethod
    def for_config(cls, config: ServiceConfig, tracing: CallTracer | None) -> Observer | None:
        if not (config.request_ids or config.access_log_sample or tracing is not None):
            return None
        return cls(
            timing_trailers=config.timing_trailers,
            access_log_sample=config.access_log_sample,
            tracing=tracing,
        )

    def admit(self, method: str, context: Context, deadline: float | None) -> ObservedCall:
        metadata = context.invocation_metadata() or ()
        given = next((v for k, v in metadata if k == REQUEST_ID_KEY and isinstance(v, str)), None)
        call = ObservedCall(self, method, deadline, given)
        if self.tracing is not None:
            span = self.tracing.start(method, metadata)
            if span.is_recording():  # the sampler's choice: an unsampled call costs no more spans
                call.trace = span
        CURRENT_CALL.set(call)
        return call

    def ended(self, call: ObservedCall, code: str, seconds: float) -> None:
        if (span := call.span) is not None and self.tracing is not None:
            self.tracing.end(span, call, code)
        sample = self.access_log_sample
        if sample and (code != "OK" or random.random() < sample):
            name, version = call.model
            access.info(
                "%s %s in %.3f ms: %d items of %s/%s, queue %.3f ms, compute %.3f ms",
                call.method,
                code,
                seconds * 1e3,
                call.items,
                name or "(default)",
                version or "(newest)",
                call.queue * 1e3,
                call.compute * 1e3,
                extra={
                    "request_id": call.request_id,
                    "method": call.method,
                    "model": name or None,
                    "version": version or None,
                    "code": code,
                    "duration_ms": round(seconds * 1e3, 3),
                    "queue_ms": round(call.queue * 1e3, 3),
                    "compute_ms": round(call.compute * 1e3, 3),
                    "items": call.items,
                },
            )

    def unary(self, handler: Handler) -> Handler:
        """`handler`, noting on the call which model the request asked for and which one answered."""

        async def noted(request: Any, call: Call) -> Any:
            observed = cast(ObservedCall, call)
            observed.note_model(request)
            response = await handler(request, call)
            observed.note_model(response)
            return response

        return noted

    def streaming(self, stream: StreamHandler) -> StreamHandler:
        async def noted(request: Any, call: Call) -> AsyncIterator[Any]:
            observed = cast(ObservedCall, call)
            observed.note_model(request)
            # aclosing: a client that goes away closes this generator, which closes the servicer's.
            async with aclosing(cast(AsyncGenerator[Any, None], stream(request, call))) as responses:
                async for response in responses:
                    observed.note_model(response)
                    yield response

        return noted


class ObservedCall(Call):
    """A Call that knows its request id, its model and its server span."""

    __slots__ = ("_given", "_id", "_observer", "method", "model")

    def __init__(self, observer: Observer, method: str, deadline: float | None, given: str | None) -> None:
        super().__init__(deadline)
        self._observer = observer
        self.method = method
        self._given = given
        self._id = given if given is not None and _VALID_ID.fullmatch(given) else None
        self.model: tuple[str, int] = ("", 0)

    @property
    def request_id(self) -> str:
        if self._id is None:
            self._id = os.urandom(8).hex()
        return self._id

    @property
    def span(self) -> Span | None:
        return cast("Span | None", self.trace)

    def trace_ids(self) -> tuple[str, str] | None:
        if (span := self.span) is None:
            return None
        context = span.get_span_context()
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"

    def note_model(self, message: Any) -> None:
        ref = getattr(message, "model", None)
        if ref is not None:
            self.model = (ref.name, ref.version)

    def trailers(self) -> tuple[tuple[str, str], ...]:
        timing = super().trailers() if self._observer.timing_trailers else ()
        if self._given is None and not self._observer.always_id:
            return timing
        return (*timing, (REQUEST_ID_KEY, self.request_id))

    def finished(self, method: MethodMetrics, code: str, started: float) -> float:
        seconds = super().finished(method, code, started)
        self._observer.ended(self, code, seconds)
        return seconds
