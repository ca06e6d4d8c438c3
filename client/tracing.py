"""Trace context for the Python clients: a call made inside a span continues that trace on the server.

On only when the application traces: the `tracing` extra is installed and a TracerProvider has been
set (opentelemetry.trace.set_tracer_provider). Then the clients' channels get OpenTelemetry's gRPC
instrumentation, which makes a CLIENT span per call and sends its W3C `traceparent`; otherwise
they get no interceptor, and calls cost nothing more.
"""

from __future__ import annotations

from typing import Any

import grpc


def _tracing() -> bool:
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation import grpc as _  # noqa: F401
    except ImportError:
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def traced(channel: grpc.Channel) -> grpc.Channel:
    """`channel`, with client spans and propagation when the application traces."""
    if not _tracing():
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    # Its own intercept_channel: its interceptor is not one of grpc's interceptor classes. Neither
    # function carries annotations.
    channel = intercept_channel(channel, client_interceptor())  # type: ignore[no-untyped-call]
    return channel


def aio_interceptors() -> list[Any] | None:
    """The interceptors for a new grpc.aio channel: client spans when the application traces."""
    if not _tracing():
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]
