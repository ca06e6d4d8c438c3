"""Request ids, the access log and OpenTelemetry spans, on real servers (docs/observability.md)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import wait_until
from helpers.otlp import otlp_receiver
from helpers.servers import RunningServer, config_for
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from client.clients import VaeClient
from client.requests import decode_request
from service.logs import ACCESS_LOGGER
from service.tracing import Tracing
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

GENERATED = re.compile(r"[0-9a-f]{16}")
# A client's trace: trace id 0af7..., span id b7ad...; sampled.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def started(tiny_model_repo: Path) -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def start(tracing: Tracing | None = None, **options: Any) -> RunningServer:
        servers.append(RunningServer(config_for(tiny_model_repo, **options), tracing=tracing))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def decode(target: str, metadata: tuple[tuple[str, str], ...] = (), **request: Any) -> Any:
    """The trailing metadata of one Decode call (or of the error it ended with)."""
    with grpc.insecure_channel(target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        message = request.get("message") or decode_request(np.zeros((2, 8), np.float32))
        try:
            _, call = stub.Decode.with_call(message, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return dict(exc.trailing_metadata())  # type: ignore[attr-defined]
        return dict(call.trailing_metadata())


BAD_DECODE = pb.DecodeRequest(latents=pb.Tensor(shape=[1, 3], dtype=pb.DTYPE_FLOAT32, data=bytes(12)))


def test_request_ids_are_off_by_default(server: RunningServer) -> None:
    assert "x-request-id" not in decode(server.target, (("x-request-id", "abc"),))


def test_with_request_ids_the_client_gets_its_own_id_back(started: Callable[..., RunningServer]) -> None:
    server = started(request_ids=True)
    assert decode(server.target, (("x-request-id", "order-17/a"),))["x-request-id"] == "order-17/a"
    failed = decode(server.target, (("x-request-id", "order-18"),), message=BAD_DECODE)
    assert failed["x-request-id"] == "order-18"
    # Nothing sent, nothing returned: no id is made when nothing needs one.
    assert "x-request-id" not in decode(server.target)
    # Too long, or with spaces: replaced by a fresh id.
    for bad in ("x" * 129, "two words"):
        assert GENERATED.fullmatch(decode(server.target, (("x-request-id", bad),))["x-request-id"])


def test_request_ids_go_with_timing_trailers(started: Callable[..., RunningServer]) -> None:
    server = started(request_ids=True, timing_trailers=True)
    trailers = decode(server.target, (("x-request-id", "r1"),))
    assert trailers.keys() >= {"x-request-id", "x-queue-ms", "x-compute-ms"}


def test_access_log_has_a_line_per_call_with_its_fields(
    started: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = started(access_log_sample=1.0)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        trailers = decode(server.target)
        decode(server.target, (("x-request-id", "bad-one"),), message=BAD_DECODE)
    ok, failed = [record for record in caplog.records if record.name == ACCESS_LOGGER]
    assert GENERATED.fullmatch(trailers["x-request-id"])  # logged calls always answer with their id
    fields = vars(ok)
    assert fields["request_id"] == trailers["x-request-id"]
    assert (fields["method"], fields["code"], fields["items"]) == ("Decode", "OK", 2)
    assert (fields["model"], fields["version"]) == ("tiny", 1)
    assert fields["duration_ms"] >= fields["compute_ms"] > 0 and fields["queue_ms"] >= 0
    assert "Decode OK in" in ok.getMessage()
    assert (vars(failed)["request_id"], vars(failed)["code"]) == ("bad-one", "INVALID_ARGUMENT")


def test_access_log_sampling_keeps_every_failure(
    started: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = started(access_log_sample=1e-12)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        for _ in range(5):
            decode(server.target)
        decode(server.target, message=BAD_DECODE)
    codes = [vars(record)["code"] for record in caplog.records if record.name == ACCESS_LOGGER]
    assert codes == ["INVALID_ARGUMENT"]


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter


def _named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def _finished(exporter: InMemorySpanExporter, name: str, count: int) -> tuple[ReadableSpan, ...]:
    """The finished spans once `count` are named `name`: a server span ends once grpc sent the answer."""
    wait_until(lambda: len(_named(exporter.get_finished_spans(), name)) >= count, 10, f"{count} {name} spans")
    return exporter.get_finished_spans()


def test_a_traced_call_continues_the_clients_trace_with_queue_wait_and_a_linked_batch(
    started: Callable[..., RunningServer], spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    # Batches wait 50 ms for company: concurrent calls share one, whose span links to each of them.
    server = started(tracing, max_delay_ms=50.0)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: decode(server.target, (("traceparent", TRACEPARENT),)), range(4)))
    finished = _finished(exporter, "vae.v1.VaeService/Decode", 4)
    calls = _named(finished, "vae.v1.VaeService/Decode")
    assert len(calls) == 4
    for span in calls:
        assert span.kind is SpanKind.SERVER
        assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331
        assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
        attributes = span.attributes or {}
        assert attributes["rpc.system"] == "grpc" and attributes["rpc.method"] == "Decode"
        assert attributes["rpc.grpc.status_code"] == 0 and attributes["vae.items"] == 2
        assert (attributes["vae.model.name"], attributes["vae.model.version"]) == ("tiny", 1)
    assert sorted(a["x-request-id"] for a in answers) == sorted(
        str((span.attributes or {})["vae.request_id"]) for span in calls
    )
    waits = _named(finished, "queue wait")
    assert sorted(w.parent.span_id for w in waits if w.parent) == sorted(s.context.span_id for s in calls)
    batches = _named(finished, "vae.batch")
    assert batches and all(batch.parent is None for batch in batches)
    linked = sorted(link.context.span_id for batch in batches for link in batch.links)
    assert linked == sorted(span.context.span_id for span in calls)
    assert sum(int((batch.attributes or {})["vae.batch.items"]) for batch in batches) == 8
    assert any(len(batch.links) > 1 for batch in batches)
    by_id = {batch.context.span_id: batch for batch in batches}
    for wait in waits:
        batch = by_id[int(str((wait.attributes or {})["vae.batch.span_id"]), 16)]
        assert wait.end_time == batch.start_time and wait.start_time is not None
        assert wait.start_time <= wait.end_time


def test_span_status_is_an_error_only_for_the_servers_failures(
    started: Callable[..., RunningServer], spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    server = started(tracing)
    decode(server.target, message=BAD_DECODE)
    (span,) = _finished(exporter, "vae.v1.VaeService/Decode", 1)
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.status.status_code is StatusCode.UNSET  # the caller's mistake, not the server's


def test_the_python_client_sends_its_span_when_the_application_traces(
    started: Callable[..., RunningServer],
    spans: tuple[Tracing, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracing, exporter = spans
    server = started(tracing)
    # As if the application had called trace.set_tracer_provider (which can happen once per process).
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tracing.provider)
    tracer = tracing.provider.get_tracer("test")
    with tracer.start_as_current_span("application") as outer, VaeClient(server.target) as client:
        client.sample(2, seed=0)
    finished = _finished(exporter, "vae.v1.VaeService/Sample", 1)
    (client_span,) = [span for span in finished if span.kind is SpanKind.CLIENT]
    (server_span,) = _named(finished, "vae.v1.VaeService/Sample")
    assert client_span.parent is not None and client_span.parent.span_id == outer.get_span_context().span_id
    assert server_span.parent is not None and server_span.parent.span_id == client_span.context.span_id


def test_spans_reach_an_otlp_receiver_over_grpc(tiny_model_repo: Path) -> None:
    # --otlp-endpoint as an operator sets it: the SDK's OTLP/gRPC exporter, flushed when the server stops.
    with otlp_receiver() as (receiver, port):
        server = RunningServer(config_for(tiny_model_repo, otlp_endpoint=f"http://127.0.0.1:{port}"))
        try:
            assert server.server.tracing is not None
            decode(server.target)
        finally:
            server.stop()
        names = {span.name for _, span in receiver.spans}
        assert {"vae.v1.VaeService/Decode", "queue wait", "vae.batch"} <= names
        assert {resource["service.name"] for resource, _ in receiver.spans} == {"vae-serving"}
