"""Deadlines and cancellation: a request that expires or is cancelled while queued is never computed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import wait_until
from helpers.servers import ServerProcess, serving

from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

BACKLOG_ITEMS = 4096  # latents per backlog request: 16 batches of the default 256
BACKLOG_S = 1.5  # how long the queue ahead of a victim takes to drain, at least
VICTIM_TIMEOUT_S = 0.1


@pytest.fixture(scope="module")
def server(tiny_model_repo: Path) -> Iterator[ServerProcess]:
    with serving(
        tiny_model_repo, "--max-queue-items", "1000000", "--max-request-items", str(BACKLOG_ITEMS)
    ) as server:
        yield server


def _decode(n: int, seed: int) -> pb.DecodeRequest:
    z = np.random.default_rng(seed).standard_normal((n, 8), dtype=np.float32)
    latents = pb.Tensor(shape=z.shape, dtype=pb.DTYPE_FLOAT32, data=z.tobytes())
    # uint8 images keep 4096 of them under gRPC's default 4 MiB receive limit.
    return pb.DecodeRequest(latents=latents, output_dtype=pb.DTYPE_UINT8)


def _decoded_items(server: ServerProcess) -> float:
    """Items the decoder has computed in batches (warm-up not included)."""
    return server.metric("vae_batch_size_items_sum", graph="decoder")


def _backlog(stub: vae_pb2_grpc.VaeServiceStub) -> list[grpc.Future]:
    """Enough queued work to keep the decoder busy for BACKLOG_S, sized by timing one request."""
    started = time.perf_counter()
    stub.Decode(_decode(BACKLOG_ITEMS, 0), timeout=60)
    count = max(2, int(BACKLOG_S / (time.perf_counter() - started)) + 1)
    return [stub.Decode.future(_decode(BACKLOG_ITEMS, i), timeout=120) for i in range(count)]


def test_request_expiring_in_the_queue_is_dropped_and_counted(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        stub.Decode(_decode(1, 0), timeout=30)  # connected, so the victim's deadline is all queueing
        expired_before = server.metric("vae_deadline_expired_total", graph="decoder")
        items_before = _decoded_items(server)

        backlog = _backlog(stub)
        time.sleep(0.05)  # the backlog is admitted ahead of the victim
        victim_items = 3
        with pytest.raises(grpc.RpcError) as caught:
            stub.Decode(_decode(victim_items, 99), timeout=VICTIM_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert all(call.result().images.shape[0] == BACKLOG_ITEMS for call in backlog)

    # The first backlog request was timed alone before the others; all of them were computed, the
    # victim's three items were not: dropped when its turn came.
    computed = _decoded_items(server) - items_before
    assert computed == (len(backlog) + 1) * BACKLOG_ITEMS
    assert server.metric("vae_deadline_expired_total", graph="decoder") - expired_before == 1
    print(f"\ndeadline: {len(backlog) + 1} requests of {BACKLOG_ITEMS} items ahead; the victim expired unrun")


def test_cancelled_request_is_dropped_before_compute(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        stub.Decode(_decode(1, 0), timeout=30)
        expired_before = server.metric("vae_deadline_expired_total", graph="decoder")
        cancelled_before = server.metric("vae_requests_total", method="Decode", code="CANCELLED")
        items_before = _decoded_items(server)

        backlog = _backlog(stub)
        time.sleep(0.05)
        victim = stub.Decode.future(_decode(5, 99), timeout=60)
        time.sleep(0.1)  # queued behind the backlog by now
        assert victim.cancel()
        assert all(call.result().images.shape[0] == BACKLOG_ITEMS for call in backlog)
        # The server learns of the cancellation asynchronously; its count settles within moments.
        wait_until(
            lambda: (
                server.metric("vae_requests_total", method="Decode", code="CANCELLED") == cancelled_before + 1
            ),
            10,
            "the server to count the cancelled call",
        )

    computed = _decoded_items(server) - items_before
    assert computed == (len(backlog) + 1) * BACKLOG_ITEMS
    # Cancelled is not expired: the deadline metric counts only what ran out of time.
    assert server.metric("vae_deadline_expired_total", graph="decoder") == expired_before
