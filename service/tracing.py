"""OpenTelemetry traces (the `tracing` extra): a server span per call, a span per batch linked to them.

Imported only when tracing is on (service/server.py's tracing_from), so the serving code runs
without the extra. Spans, in the names of OpenTelemetry's RPC conventions:

    vae.v1.VaeService/Decode   SERVER, child of the client's span when it sent `traceparent`
    └── queue wait             from admission until the request's first items start computing
    vae.batch                  a root span per executed batch, linked to the server span of every
                               request it served (a batch serves many traces, so it has no parent)

The batcher reports batches after they ran (times from its perf_counter clock); the spans are made
then, with those times, so nothing is added to the worker thread or to the batch's critical path.
The exporter is the SDK's OTLP/gRPC one behind a BatchSpanProcessor: the OTEL_EXPORTER_OTLP_*,
OTEL_BSP_*, OTEL_TRACES_SAMPLER*, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES variables apply.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from service.batch_types import TracedSlice
from service.calls import SERVICE, TracedCall

DEFAULT_SERVICE_NAME = "vae-serving"
# Server spans are errors for these codes only (OpenTelemetry's gRPC conventions): the others,
# INVALID_ARGUMENT or NOT_FOUND, are the caller's mistakes, not the server's.
_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_STATUS_NUMBER = {code.name: code.value[0] for code in grpc.StatusCode}


class Tracing:
    """Makes the server's spans with one TracerProvider; the batchers' BatchTracer."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("vae-serving")
        self._fields = frozenset(propagate.get_global_textmap().fields)
        # The batcher's perf_counter() times -> the epoch nanoseconds spans are stamped with.
        self._epoch_ns = time.time_ns() - time.perf_counter_ns()

    def _ns(self, perf_seconds: float) -> int:
        return self._epoch_ns + int(perf_seconds * 1e9)

    def start(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> Span:
        """The server span of a call to `method`, continuing the trace its metadata carries, if any."""
        carrier = {key: value for key, value in metadata if key in self._fields}
        return self._tracer.start_span(
            f"{SERVICE.full_name}/{method}",
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE.full_name, "rpc.method": method},
        )

    def end(self, span: Span, call: TracedCall, code: str) -> None:
        """End a server span with the call's status, request id, model, items and where its time went."""
        name, version = call.model
        span.set_attributes(
            {
                "rpc.grpc.status_code": _STATUS_NUMBER[code],
                "vae.request_id": call.request_id,
                "vae.items": call.items,
                "vae.queue_seconds": call.queue,
                "vae.compute_seconds": call.compute,
            }
        )
        if name or version:
            span.set_attributes({"vae.model.name": name, "vae.model.version": version})
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()

    def batch_ran(
        self, batcher: str, served: Sequence[TracedSlice], items: int, started: float, seconds: float
    ) -> None:
        """A batch span linked to each request's server span; queue-wait spans for requests it began."""
        start = self._ns(started)
        batch = self._tracer.start_span(
            "vae.batch",
            context=Context(),  # a root: a batch belongs to no one request's trace
            links=[Link(span.get_span_context(), {"vae.items": count}) for span, _, count, _ in served],
            start_time=start,
            attributes={"vae.batcher": batcher, "vae.batch.items": items, "vae.batch.requests": len(served)},
        )
        batch.end(end_time=self._ns(started + seconds))
        ids = batch.get_span_context()
        for span, admitted, _, first in served:
            if first:
                wait = self._tracer.start_span(
                    "queue wait",
                    context=trace.set_span_in_context(span),
                    start_time=self._ns(admitted),
                    attributes={
                        "vae.batcher": batcher,
                        "vae.batch.trace_id": f"{ids.trace_id:032x}",
                        "vae.batch.span_id": f"{ids.span_id:016x}",
                    },
                )
                wait.end(end_time=start)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter (blocks up to its timeout)."""
        self.provider.shutdown()


def otlp_tracing(endpoint: str) -> Tracing:
    """Tracing to an OTLP/gRPC collector at `endpoint` ("" leaves it to OTEL_EXPORTER_OTLP_*)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint or None)))
    return Tracing(provider)
