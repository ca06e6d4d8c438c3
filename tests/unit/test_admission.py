"""Admission by time, with a fake clock: the wait a request would have against its deadline and the bound."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.admission import Admission
from service.batch_types import Expired, QueueFull
from service.batcher import Batcher
from service.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock, *, max_queue_items: int = 1_000_000, max_queue_delay_s: float = 0.0) -> Admission:
    return Admission(
        "decoder", max_queue_items=max_queue_items, max_queue_delay_s=max_queue_delay_s, clock=clock
    )


def test_before_any_measurement_only_the_item_backstop_refuses() -> None:
    gate = admission(Clock(), max_queue_items=100)
    gate.check_time(ahead=10**9, count=10**9, deadline=0.0)  # nothing measured: no estimate
    gate.check_items(queued=60, count=40)
    with pytest.raises(QueueFull, match=r"queue full \(60 of 100 items waiting, this request adds 41\)"):
        gate.check_items(queued=60, count=41)


def test_a_burst_the_device_serves_in_time_is_admitted_whole() -> None:
    clock = Clock()
    gate = admission(clock)
    gate.measured(items=1000, seconds=0.001)  # a fast device: 1 µs per item
    # Eight callers of 1,024 latents each: the last one waits for 7,168 items, 8.2 ms in all.
    for ahead in range(0, 8 * 1024, 1024):
        gate.check_time(ahead=ahead, count=1024, deadline=clock.now + 0.030)
    assert gate.wait_seconds(7 * 1024, 1024) == pytest.approx(0.008192)


def test_work_that_cannot_finish_before_the_deadline_expires_at_admission() -> None:
    clock = Clock()
    gate = admission(clock)
    gate.measured(items=100, seconds=1.0)  # 10 ms per item
    gate.check_time(ahead=40, count=9, deadline=clock.now + 0.5)  # 490 ms: in time
    with pytest.raises(Expired, match=r"deadline would pass while queued: 42 items ahead and 9 of its own"):
        gate.check_time(ahead=42, count=9, deadline=clock.now + 0.5)  # 510 ms
    clock.now += 0.2  # the same request, later: less of its deadline is left
    with pytest.raises(Expired):
        gate.check_time(ahead=20, count=9, deadline=clock.now + 0.25)


def test_the_configured_bound_refuses_with_resource_exhausted() -> None:
    clock = Clock()
    gate = admission(clock, max_queue_delay_s=0.1)
    gate.measured(items=100, seconds=0.1)  # 1 ms per item
    gate.check_time(ahead=100, count=10_000, deadline=None)  # its own work is its deadline's business
    with pytest.raises(QueueFull, match=r"about 101 ms of work is queued ahead .* bound of 100 ms"):
        gate.check_time(ahead=101, count=1, deadline=None)


def test_the_cost_per_item_follows_the_batches_that_ran() -> None:
    gate = admission(Clock())
    gate.measured(items=100, seconds=0.1)
    assert gate.item_seconds == pytest.approx(1e-3)
    for _ in range(200):  # the device slows down to 2 ms per item
        gate.measured(items=100, seconds=0.2)
    assert gate.item_seconds == pytest.approx(2e-3, rel=1e-3)


class Group:
    """One call's requests (service/calls.py's Call)."""

    def __init__(self) -> None:
        self.counted = False

    def first_expiry(self) -> bool:
        first, self.counted = not self.counted, True
        return first


def test_the_parts_of_one_call_count_one_expiry() -> None:
    metrics = Metrics()

    async def main() -> None:
        batcher = Batcher(
            lambda batch: (batch,),
            max_batch_items=4,
            max_delay_s=0.0,
            max_queue_items=64,
            observer=metrics.graph("decoder"),
        )
        batcher._admission.measured(4, 4.0)  # 1 s per item: three parts of a call cannot make 0.5 s
        group, deadline = Group(), time.perf_counter()
        parts = np.zeros((3, 2), np.float32)
        for _ in range(3):
            with pytest.raises(Expired):
                await batcher.submit(parts, deadline + 0.5, group=group)
        with pytest.raises(Expired):
            batcher.admit_work(100, deadline + 0.5, group)
        await batcher.close()

    asyncio.run(main())
    value = metrics.registry.get_sample_value("vae_deadline_expired_total", {"graph": "decoder"})
    assert value == 1


def test_the_byte_backstop_counts_queued_items_of_one_shape_by_their_size() -> None:
    gate = Admission("encoder", max_queue_items=1000, max_queue_delay_s=0.0, max_queue_bytes=1000)
    gate.check_items(queued=1, count=8, item_bytes=100)  # 900 bytes
    with pytest.raises(QueueFull, match=r"queue full \(200 of 1000 bytes waiting, this request adds 900\)"):
        gate.check_items(queued=2, count=9, item_bytes=100)
    # Small items stay bounded by the item count, as before the byte bound.
    gate.check_items(queued=500, count=499, item_bytes=1)
