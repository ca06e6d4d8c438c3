"""Graceful drain: SIGTERM under load flips health, refuses new calls, finishes every admitted one, exits."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.load import Tally, closed_loop, timed_call
from helpers.servers import ServerProcess, spawn_server

from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

pytestmark = pytest.mark.slow

GRACE_S = 10.0
WORKERS, ITEMS = 16, 64
WARM_CALLS = 4 * WORKERS
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# What a call refused during the drain is told, and what a call gets once the port is closed:
# neither call was admitted, so neither is a lost response.
REFUSED = ("UNAVAILABLE: the server is shutting down", "UNAVAILABLE: failed to connect to all addresses")


def _request() -> pb.DecodeRequest:
    z = np.random.default_rng(0).standard_normal((ITEMS, 8), dtype=np.float32)
    return pb.DecodeRequest(latents=pb.Tensor(shape=z.shape, dtype=pb.DTYPE_FLOAT32, data=z.tobytes()))


@dataclass
class Drain:
    """What the clients saw around one SIGTERM."""

    load: Tally  # the workers that were calling when the signal came
    late: Tally  # a client that arrived after it
    admitted_before: int  # calls answered OK before the signal
    not_serving_s: float | None  # signal -> health update NOT_SERVING
    exit_status: int
    exit_s: float  # signal -> process gone


async def _watch_health(target: str, seen: list[tuple[float, int]]) -> None:
    """Record (time, status) of every grpc.health.v1 update until the stream ends."""
    async with grpc.aio.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            async for update in stream:
                seen.append((time.monotonic(), update.status))
        except grpc.aio.AioRpcError:
            pass  # the server went away: the stream ends, which is expected here


async def _scenario(server: ServerProcess) -> Drain:
    request, load, late = _request(), Tally(), Tally()
    health: list[tuple[float, int]] = []
    watcher = asyncio.ensure_future(_watch_health(server.target, health))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        # Each worker keeps calling until it is refused: a client told to go elsewhere.
        traffic = asyncio.ensure_future(
            closed_loop(
                lambda: stub.Decode(request, timeout=60),
                workers=WORKERS,
                until=lambda: server.process.poll() is not None,
                tally=load,
                items=ITEMS,
                stop_on=frozenset({"UNAVAILABLE"}),
            )
        )
        # Under way before the signal: every worker has had answers, so the queue is kept busy.
        while load.codes["OK"] < WARM_CALLS:
            await asyncio.sleep(0.02)
        admitted_before = load.codes["OK"]
        signalled = time.monotonic()
        server.send(signal.SIGTERM)
        await asyncio.sleep(0.2)
        # A client arriving after the signal, on a connection of its own.
        async with grpc.aio.insecure_channel(server.target) as fresh:
            await timed_call(lambda: vae_pb2_grpc.VaeServiceStub(fresh).Decode(request, timeout=10), late)
        await traffic
    status = await asyncio.to_thread(server.wait, GRACE_S + 20)
    exited = time.monotonic()
    await watcher
    not_serving = next((at for at, value in health if value == NOT_SERVING and at >= signalled), None)
    return Drain(
        load=load,
        late=late,
        admitted_before=admitted_before,
        not_serving_s=None if not_serving is None else not_serving - signalled,
        exit_status=status,
        exit_s=exited - signalled,
    )


def test_sigterm_under_load_loses_no_admitted_request(tiny_model_repo: Path) -> None:
    server = spawn_server(tiny_model_repo, "--grace-seconds", str(GRACE_S))
    try:
        server.wait_serving()
        result = asyncio.run(_scenario(server))
    finally:
        server.stop()
    load, late = result.load, result.late
    lost = sum(count for outcome, count in load.outcomes.items() if not outcome.startswith(REFUSED))
    print(
        f"\ndrain: {load.sent} calls under load: {load.summary()}; after the signal: {late.summary()}\n"
        f"  NOT_SERVING after {result.not_serving_s} s, exit {result.exit_status} after {result.exit_s:.2f}"
        f" s, lost {lost}; outcomes {dict(load.outcomes)}"
    )
    assert lost == 0
    assert load.codes["OK"] > result.admitted_before  # calls admitted before the signal finished after it
    assert late.codes == {"UNAVAILABLE": 1}
    assert result.not_serving_s is not None and result.not_serving_s < 1.0
    assert result.exit_status == 0
    assert result.exit_s < GRACE_S
    assert "Traceback" not in server.log_text()
