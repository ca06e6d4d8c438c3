"""Soak: over 200,000 items through every batched RPC; the server's resident memory stays flat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from helpers.load import Tally, closed_loop
from helpers.servers import ServerProcess, serving

from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

pytestmark = pytest.mark.slow

WARM_UP_ITEMS = 40_000
SOAK_ITEMS = 200_000  # counted after warm-up
SAMPLES = 20  # resident memory readings across the soak


def _tensor(array: np.ndarray) -> pb.Tensor:
    dtype = pb.DTYPE_UINT8 if array.dtype == np.uint8 else pb.DTYPE_FLOAT32
    return pb.Tensor(shape=array.shape, dtype=dtype, data=array.tobytes())


def _workloads(stub: vae_pb2_grpc.VaeServiceStub) -> list[tuple[Callable[[], Awaitable[Any]], int]]:
    """(call, items per call) for each batched RPC; uint8 images keep the client's share of the CPU small."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    latents = rng.standard_normal((256, 8), dtype=np.float32)
    uint8 = pb.DTYPE_UINT8
    decode = pb.DecodeRequest(latents=_tensor(latents), output_dtype=uint8)
    sample = pb.SampleRequest(n=256, output_dtype=uint8)  # unseeded: fresh latents every call
    encode = pb.EncodeRequest(images=_tensor(images), samples=4, seed=7)
    reconstruct = pb.ReconstructRequest(images=_tensor(images), output_dtype=uint8)
    return [
        (lambda: stub.Decode(decode, timeout=60), 256),
        (lambda: stub.Sample(sample, timeout=60), 256),
        (lambda: stub.Encode(encode, timeout=60), 64),
        (lambda: stub.Reconstruct(reconstruct, timeout=60), 64),
    ]


async def _soak(server: ServerProcess) -> tuple[Tally, list[int], float]:
    """Warm up, then soak; resident memory read SAMPLES times once warm. Returns tally, readings, seconds."""
    tally, readings = Tally(), []
    async with grpc.aio.insecure_channel(server.target) as channel:
        workloads = _workloads(vae_pb2_grpc.VaeServiceStub(channel))

        async def run(until_items: int) -> None:
            await asyncio.gather(
                *(
                    closed_loop(
                        call, workers=1, until=lambda: tally.items >= until_items, tally=tally, items=n
                    )
                    for call, n in workloads
                )
            )

        await run(WARM_UP_ITEMS)
        started, warm = time.perf_counter(), tally.items
        for step in range(1, SAMPLES + 1):
            readings.append(server.rss_bytes())
            await run(warm + SOAK_ITEMS * step // SAMPLES)
        readings.append(server.rss_bytes())
    return tally, readings, time.perf_counter() - started


def test_soak_keeps_memory_flat(tiny_model_repo: Path) -> None:
    with serving(tiny_model_repo) as server:
        tally, readings, seconds = asyncio.run(_soak(server))
    mib = [r / 2**20 for r in readings]
    growth = readings[-1] / readings[0] - 1
    print(
        f"\nsoak: {tally.items} items in {tally.sent} calls ({dict(tally.codes)}); "
        f"{SOAK_ITEMS / seconds:.0f} items/s after warm-up; RSS after warm-up {mib[0]:.1f} MiB, "
        f"max {max(mib):.1f}, end {mib[-1]:.1f} "
        f"({growth:+.2%})"
    )
    assert tally.failed() == 0, tally.outcomes
    assert tally.items >= WARM_UP_ITEMS + SOAK_ITEMS
    assert growth < 0.05
