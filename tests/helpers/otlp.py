"""A small OTLP/gRPC trace receiver, from the official proto package (opentelemetry-proto).

No OpenTelemetry Collector is packaged on the registries the tests may use (PyPI, Debian, npm),
so the tests export to this: the real exporter, the real protocol, a receiver that keeps what it got.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with its resource's attributes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[tuple[dict[str, Any], Span]] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def otlp_receiver(host: str = "127.0.0.1") -> Iterator[tuple[Receiver, int]]:
    """A receiver listening on a free port of `host`, and that port."""
    receiver = Receiver()
    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(0)
