"""Replica loss: two `vae serve` processes behind haproxy or client round_robin; one dies under load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers.haproxy import haproxy
from helpers.load import Tally, closed_loop
from helpers.servers import ServerProcess, serving

from client.clients import AsyncVaeClient

pytestmark = pytest.mark.slow

WORKERS, ITEMS = 16, 16
WARM_CALLS, CALLS_AFTER_KILL = 200, 400


@contextmanager
def _replicas(repo: Path, count: int) -> Iterator[list[ServerProcess]]:
    with ExitStack() as stack:
        yield [stack.enter_context(serving(repo)) for _ in range(count)]


def _served(replica: ServerProcess) -> float:
    return replica.metric("vae_requests_total", method="Decode", code="OK")


async def _kill_one_under_load(
    target: str, replicas: list[ServerProcess], channel: grpc.aio.Channel | None = None
) -> tuple[Tally, list[float], float]:
    """Load via `target`, kill replicas[0] once warm; Decodes served by each before and the survivor after."""
    latents = np.random.default_rng(0).standard_normal((ITEMS, 8), dtype=np.float32)
    tally, done = Tally(), asyncio.Event()
    async with AsyncVaeClient(target, timeout=30, channel=channel) as client:
        traffic = asyncio.ensure_future(
            closed_loop(
                lambda: client.decode(latents), workers=WORKERS, until=done.is_set, tally=tally, items=ITEMS
            )
        )
        while tally.sent < WARM_CALLS and not traffic.done():
            await asyncio.sleep(0.02)
        before = [await asyncio.to_thread(_served, replica) for replica in replicas]
        await asyncio.to_thread(replicas[0].kill)
        at_kill = tally.sent
        while tally.sent < at_kill + CALLS_AFTER_KILL and not traffic.done():
            await asyncio.sleep(0.02)
        done.set()
        await traffic
    survivor = await asyncio.to_thread(_served, replicas[1]) - before[1]
    return tally, before, survivor


def _check(tally: Tally, before: list[float], survivor: float, how: str) -> None:
    print(
        f"\nreplica loss ({how}): {tally.summary()}; Decodes served before the kill {before}, then {survivor}"
    )
    assert all(count > 0 for count in before), "round robin should have used both replicas"
    assert tally.sent >= WARM_CALLS + CALLS_AFTER_KILL
    assert tally.failed() == 0, tally.outcomes
    assert survivor >= CALLS_AFTER_KILL


def test_killing_a_replica_behind_haproxy_fails_no_call(tiny_model_repo: Path, tmp_path: Path) -> None:
    with (
        _replicas(tiny_model_repo, 2) as replicas,
        haproxy(tmp_path, [r.port for r in replicas]) as (target, log),
    ):
        tally, before, survivor = asyncio.run(_kill_one_under_load(target, replicas))
    _check(tally, before, survivor, "haproxy")
    assert any("replica0 is DOWN" in line for line in log)


def test_killing_a_replica_under_client_round_robin_fails_no_call(tiny_model_repo: Path) -> None:
    with _replicas(tiny_model_repo, 2) as replicas:
        target = "ipv4:" + ",".join(replica.target for replica in replicas)
        tally, before, survivor = asyncio.run(_kill_one_under_load(target, replicas))
    _check(tally, before, survivor, "client round_robin")


def test_without_the_retry_policy_the_same_kill_fails_calls(tiny_model_repo: Path, tmp_path: Path) -> None:
    """The control: a bare channel with retries off, through the same haproxy, loses calls."""

    async def bare(target: str, replicas: list[ServerProcess]) -> tuple[Tally, list[float], float]:
        async with grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
            return await _kill_one_under_load(target, replicas, channel)

    with (
        _replicas(tiny_model_repo, 2) as replicas,
        haproxy(tmp_path, [r.port for r in replicas]) as (target, _),
    ):
        tally, _, _ = asyncio.run(bare(target, replicas))
    print(f"\nreplica loss without retries: {tally.summary()}")
    assert tally.failed() > 0
    assert set(tally.codes) == {"OK", "UNAVAILABLE"}
