"""Bad input: over 10,000 generated malformed requests across every RPC, against one real server process."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers.malformed import Case, Limits, malformed_cases, oversized_case
from helpers.servers import SERVING, ServerProcess, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.clients import VaeClient
from service.calls import SERVICE
from vae.v1 import vae_pb2_grpc

pytestmark = pytest.mark.slow

# Small limits make oversized messages and over-long batches cheap to build and to send.
LIMITS = Limits(
    model="tiny",
    image_shape=(1, 28, 28),
    latent_dim=8,
    max_request_items=256,
    max_posterior_samples=64,
    max_stream_items=1_000_000,
    max_message_bytes=512 * 1024,
)
# Calls per example go out together, so the server sees concurrent bad requests too; many calls per
# example spread hypothesis's fixed cost per example (measured: it dominates with a dozen).
CALLS_PER_EXAMPLE = 50
EXAMPLES = 205  # 10,250 calls
OVERSIZED_EXAMPLES, OVERSIZED_PER_EXAMPLE = 25, 4
REQUIRED_CALLS = 10_000
# Every RPC the service offers, so that one added later is fuzzed too or this test fails.
METHODS = set(SERVICE.methods_by_name)
# Examples are generated, not replayed from a database, so nothing is written into the work tree.
PROPERTY = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
ALLOWED = {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}


@pytest.fixture(scope="module")
def server(tiny_model_repo: Path) -> Iterator[ServerProcess]:
    args = [
        "--max-request-items", str(LIMITS.max_request_items),
        "--max-posterior-samples", str(LIMITS.max_posterior_samples),
        "--max-stream-items", str(LIMITS.max_stream_items),
        # One limit both ways, as the property tests assume.
        "--max-receive-message-bytes", str(LIMITS.max_message_bytes),
        "--max-send-message-bytes", str(LIMITS.max_message_bytes),
    ]  # fmt: skip
    with serving(tiny_model_repo, *args) as server:
        yield server


def _send(
    channel: grpc.Channel, stub: vae_pb2_grpc.VaeServiceStub, cases: list[Case]
) -> list[tuple[str, str]]:
    """Send every case (unary calls concurrently), return (status code, message) for each."""
    pending: list[grpc.Future | tuple[str, str]] = []
    for case in cases:
        path = f"/vae.v1.VaeService/{case.method}"
        if case.method == "SampleStream":
            call = (
                channel.unary_stream(path)(case.request, timeout=30)
                if isinstance(case.request, bytes)
                else stub.SampleStream(case.request, timeout=30)
            )
            try:
                responses = sum(1 for _ in call)
                pending.append(("OK", f"{responses} responses"))
            except grpc.RpcError as error:
                pending.append((error.code().name, error.details() or ""))
        elif isinstance(case.request, bytes):  # not protobuf at all: no serializer touches it
            pending.append(channel.unary_unary(path).future(case.request, timeout=30))
        else:
            pending.append(getattr(stub, case.method).future(case.request, timeout=30))
    results = []
    for item in pending:
        if isinstance(item, tuple):
            results.append(item)
        elif (error := item.exception()) is not None:
            results.append((error.code().name, error.details() or ""))
        else:
            results.append(("OK", "answered"))
    return results


def _valid_calls_succeed(target: str) -> None:
    with VaeClient(target, timeout=30) as client:
        images = np.random.default_rng(0).random((3, *LIMITS.image_shape), dtype=np.float32)
        assert client.encode(images, samples=2, seed=1).z is not None
        assert client.decode(np.zeros((2, LIMITS.latent_dim), np.float32)).images.shape == (
            2,
            *LIMITS.image_shape,
        )
        assert client.sample(4, seed=3).images.shape == (4, *LIMITS.image_shape)
        assert sum(len(chunk.images) for chunk in client.sample_stream(300, seed=3)) == 300
        assert client.reconstruct(images).error.shape == (3,)
        assert client.interpolate(images[0], images[1], steps=5).images.shape == (5, *LIMITS.image_shape)
        assert client.score(images, samples=3, seed=1).log_likelihood.shape == (3,)
        assert [info.version for info in client.list_models()] == [1]
        assert client.model_info().latent_dim == LIMITS.latent_dim


def _run_property(
    server: ServerProcess, cases: st.SearchStrategy[Case], examples: int, per_example: int
) -> Counter[tuple[str, str, str]]:
    """Send `examples` lists of `per_example` malformed calls; every answer must name its fault."""
    tally: Counter[tuple[str, str, str]] = Counter()  # (method, fault, code)
    with grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)

        @settings(PROPERTY, max_examples=examples)
        @given(st.lists(cases, min_size=per_example, max_size=per_example))
        def every_answer_names_the_fault(batch: list[Case]) -> None:
            answers = _send(channel, stub, batch)
            for case, (code, _) in zip(batch, answers, strict=True):
                tally[case.method, case.fault, code] += 1
            problems = [p for case, answer in zip(batch, answers, strict=True) if (p := case.check(*answer))]
            assert not problems, "\n".join(problems)

        every_answer_names_the_fault()
        assert server.process.poll() is None, server.log_text()
        assert server.health(channel) == SERVING
    return tally


def _codes(tally: Counter[tuple[str, str, str]]) -> Counter[str]:
    codes: Counter[str] = Counter()
    for (_, _, code), count in tally.items():
        codes[code] += count
    return codes


def _no_internal_errors(server: ServerProcess) -> None:
    """The server's own count agrees: no call ended INTERNAL or UNKNOWN, and nothing raised."""
    broken = {
        labels: value
        for (name, labels), value in server.metrics().items()
        if name == "vae_requests_total" and value and dict(labels)["code"] in ("INTERNAL", "UNKNOWN")
    }
    assert not broken
    assert "Traceback" not in server.log_text()


def test_malformed_requests_get_precise_errors_and_the_server_keeps_serving(server: ServerProcess) -> None:
    with VaeClient(server.target) as client:
        info = client.model_info()
    # The strategies build their faults from LIMITS; a drift would make their "valid" parts invalid.
    assert (info.name, info.image_shape, info.latent_dim, info.max_request_items) == (
        LIMITS.model, LIMITS.image_shape, LIMITS.latent_dim, LIMITS.max_request_items
    )  # fmt: skip
    started = time.monotonic()
    tally = _run_property(server, malformed_cases(LIMITS), EXAMPLES, CALLS_PER_EXAMPLE)
    seconds = time.monotonic() - started
    codes = _codes(tally)
    sent = sum(codes.values())
    print(f"\nbad input: {sent} malformed calls in {seconds:.1f} s ({sent / seconds:.0f}/s): {dict(codes)}")
    assert sent >= REQUIRED_CALLS
    assert set(codes) <= ALLOWED
    assert {method for method, _, _ in tally} == METHODS
    _valid_calls_succeed(server.target)
    _no_internal_errors(server)


def test_oversized_messages_are_refused_with_resource_exhausted(server: ServerProcess) -> None:
    started = time.monotonic()
    tally = _run_property(server, oversized_case(LIMITS), OVERSIZED_EXAMPLES, OVERSIZED_PER_EXAMPLE)
    seconds = time.monotonic() - started
    codes = _codes(tally)
    print(f"\noversized: {sum(codes.values())} calls in {seconds:.1f} s: {dict(codes)}")
    assert codes == {"RESOURCE_EXHAUSTED": OVERSIZED_EXAMPLES * OVERSIZED_PER_EXAMPLE}
    _valid_calls_succeed(server.target)
    _no_internal_errors(server)
