"""The batcher with a plain run_batch: merging, splitting, admission, expiry, failures, warm-up, close."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np
import pytest

from service.batch_types import BatcherClosed, BatchFailed, Expired, QueueFull
from service.batcher import Batcher
from service.metrics import Metrics
from service.warm_up import bucket_sizes

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """run_batch that doubles its input and remembers every batch it saw; can be held closed."""

    def __init__(self, fail_when: Callable[[np.ndarray], bool] = lambda batch: False) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_when = fail_when

    def __call__(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        self.entered.set()
        self.gate.wait()
        self.batches.append(batch.copy())
        if self.fail_when(batch):
            raise RuntimeError("boom")
        return (batch * 2, batch.sum(axis=1))


def make(run: Callable[[np.ndarray], Sequence[np.ndarray]], metrics: Metrics, **options: Any) -> Batcher:
    settings = {"max_batch_items": 4, "max_delay_s": 0.0, "max_queue_items": 16, **options}
    return Batcher(run, observer=metrics.graph("decoder"), name="test", **settings)


def items(*values: float) -> np.ndarray:
    return np.array([[v, v + 0.5] for v in values], np.float32)


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"graph": "decoder", **labels})
    return 0.0 if value is None else value


async def hold(recorder: Recorder, batcher: Batcher) -> asyncio.Future[Any]:
    """Occupy the worker with a one-item batch held inside run_batch; returns that request."""
    recorder.gate.clear()
    recorder.entered.clear()
    first = asyncio.ensure_future(batcher.submit(items(100)))
    await asyncio.to_thread(recorder.entered.wait)
    return first


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics)
        results = await asyncio.gather(*(batcher.submit(items(i)) for i in range(3)))
        assert [len(b) for b in recorder.batches] == [3]
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result.outputs[0], items(i) * 2)
            np.testing.assert_array_equal(result.outputs[1], items(i).sum(axis=1))
            assert result.compute_seconds > 0 and result.queue_seconds >= 0
        await batcher.close()

    run(main)
    assert sample(metrics, "vae_batch_size_items_sum") == 3
    assert sample(metrics, "vae_batch_size_items_count") == 1
    assert sample(metrics, "vae_queue_wait_seconds_count") == 3
    assert sample(metrics, "vae_queue_depth_items") == 0


def test_requests_larger_than_a_batch_are_split_and_reassembled_in_order() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics)
        big, small = items(*range(10)), items(50)
        got_big, got_small = await asyncio.gather(batcher.submit(big), batcher.submit(small))
        np.testing.assert_array_equal(got_big.outputs[0], big * 2)
        np.testing.assert_array_equal(got_small.outputs[0], small * 2)
        # Batches are filled to the limit: the small request rides in the last one.
        assert [len(b) for b in recorder.batches] == [4, 4, 3]
        assert got_big.compute_seconds >= got_small.compute_seconds
        await batcher.close()

    run(main)


def test_items_queued_while_a_batch_runs_go_in_the_next_batch() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics)
        first = await hold(recorder, batcher)
        waiting = [asyncio.ensure_future(batcher.submit(items(i))) for i in range(3)]
        await asyncio.sleep(0)
        assert batcher.queued_items == 3
        assert sample(metrics, "vae_queue_depth_items") == 3
        recorder.gate.set()
        await asyncio.gather(first, *waiting)
        assert [len(b) for b in recorder.batches] == [1, 3]
        await batcher.close()

    run(main)


def test_a_full_queue_rejects_at_admission() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics, max_queue_items=8)
        first = await hold(recorder, batcher)
        queued = asyncio.ensure_future(batcher.submit(items(*range(6))))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match=r"queue full \(6 of 8 items waiting, this request adds 3\)"):
            await batcher.submit(items(1, 2, 3))
        recorder.gate.set()
        await asyncio.gather(first, queued)
        await batcher.close()

    run(main)


def test_expired_requests_are_dropped_before_running() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics)
        first = await hold(recorder, batcher)
        expired = asyncio.ensure_future(batcher.submit(items(7), deadline=time.perf_counter() + 0.001))
        alive = asyncio.ensure_future(batcher.submit(items(8), deadline=time.perf_counter() + 60))
        await asyncio.sleep(0.01)  # the first deadline passes while the worker is held
        recorder.gate.set()
        with pytest.raises(Expired, match="deadline passed while queued"):
            await expired
        await asyncio.gather(first, alive)
        assert [b[:, 0].tolist() for b in recorder.batches] == [[100.0], [8.0]]
        await batcher.close()

    run(main)
    assert sample(metrics, "vae_deadline_expired_total") == 1


def test_cancelled_requests_are_dropped_before_running() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics)
        first = await hold(recorder, batcher)
        cancelled = asyncio.ensure_future(batcher.submit(items(7)))
        kept = asyncio.ensure_future(batcher.submit(items(8)))
        await asyncio.sleep(0)
        cancelled.cancel()
        recorder.gate.set()
        await asyncio.gather(first, kept)
        assert [b[:, 0].tolist() for b in recorder.batches] == [[100.0], [8.0]]
        assert batcher.queued_items == 0
        await batcher.close()

    run(main)
    assert sample(metrics, "vae_deadline_expired_total") == 0


def test_a_failing_batch_fails_only_its_own_requests(caplog: pytest.LogCaptureFixture) -> None:
    recorder, metrics = Recorder(fail_when=lambda batch: bool((batch[:, 0] == 13).any())), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics, max_batch_items=2)
        results = await asyncio.gather(
            *(batcher.submit(items(v)) for v in (12, 13, 14, 15)), return_exceptions=True
        )
        failed = [isinstance(r, BatchFailed) for r in results]
        assert failed == [True, True, False, False]  # 12 and 13 shared the failing batch
        assert str(results[0]) == "inference failed; the server log has the details"
        await batcher.close()

    with caplog.at_level(logging.ERROR, logger="service.batcher"):
        run(main)
    assert "a batch of 2 items from 2 requests failed" in caplog.text
    assert "RuntimeError: boom" in caplog.text  # the traceback is in the log, not in the answer


def test_outputs_that_do_not_match_inputs_one_to_one_fail_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    async def main() -> None:
        batcher = make(lambda batch: (batch[:-1],), metrics)
        with pytest.raises(BatchFailed):
            await batcher.submit(items(1, 2))
        await batcher.close()

    with caplog.at_level(logging.ERROR, logger="service.batcher"):
        run(main)
    assert "run_batch returned first axes [1] for a batch of 2 items" in caplog.text


def test_a_full_batch_runs_without_waiting_for_the_delay() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        # With an hour of delay, only a full batch can ever run; the test timeout guards it.
        batcher = make(recorder, metrics, max_delay_s=3600.0)
        result = await batcher.submit(items(1, 2, 3, 4))
        np.testing.assert_array_equal(result.outputs[0], items(1, 2, 3, 4) * 2)
        await batcher.close()

    run(main)


def test_close_finishes_admitted_work_then_refuses() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics)
        first = await hold(recorder, batcher)
        queued = asyncio.ensure_future(batcher.submit(items(1)))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(BatcherClosed):
            await batcher.submit(items(2))
        recorder.gate.set()
        await closing
        assert first.done() and queued.done() and queued.exception() is None

    run(main)


def test_warm_up_runs_every_bucket_once() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics, max_batch_items=6)
        await batcher.warm_up(items(1), bucket_sizes(6))
        await batcher.close()

    run(main)
    assert [len(b) for b in recorder.batches] == [1, 2, 4, 6]
    assert sample(metrics, "vae_batch_size_items_count") == 0  # warm-up is not traffic


@pytest.mark.parametrize(
    ("limit", "sizes"), [(1, [1]), (8, [1, 2, 4, 8]), (100, [1, 2, 4, 8, 16, 32, 64, 100])]
)
def test_bucket_sizes(limit: int, sizes: list[int]) -> None:
    assert bucket_sizes(limit) == sizes


def test_a_lone_caller_never_waits_for_the_gather_window() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics, max_gather_s=60.0)  # any wait would time the test out
        for value in range(3):
            await batcher.submit(items(value))
        assert [len(b) for b in recorder.batches] == [1, 1, 1]
        await batcher.close()

    run(main)


def test_the_next_batch_waits_for_the_callers_just_answered_and_those_queued() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics, max_batch_items=8, max_gather_s=60.0)
        first = await hold(recorder, batcher)
        queued = [asyncio.ensure_future(batcher.submit(items(i))) for i in range(3)]
        await asyncio.sleep(0)
        recorder.gate.set()
        await first
        # 1 answered + 3 queued: nothing runs until the first caller is back, then all 4 at once.
        await asyncio.sleep(0.05)
        assert [len(b) for b in recorder.batches] == [1]
        queued.append(asyncio.ensure_future(batcher.submit(items(10))))
        await asyncio.wait_for(asyncio.gather(*queued), timeout=5)
        assert [len(b) for b in recorder.batches] == [1, 4]
        # Four callers come back one by one: the batch starts when the fourth is in.
        back = [asyncio.ensure_future(batcher.submit(items(20 + i))) for i in range(3)]
        await asyncio.sleep(0.05)
        assert [len(b) for b in recorder.batches] == [1, 4]
        back.append(asyncio.ensure_future(batcher.submit(items(23))))
        await asyncio.wait_for(asyncio.gather(*back), timeout=5)
        assert [len(b) for b in recorder.batches] == [1, 4, 4]
        await batcher.close()

    run(main)


def test_fewer_callers_than_last_time_run_after_the_gather_window() -> None:
    recorder, metrics = Recorder(), Metrics()

    async def main() -> None:
        batcher = make(recorder, metrics, max_batch_items=8, max_gather_s=0.05)
        await asyncio.gather(*(batcher.submit(items(i)) for i in range(4)))  # one batch of 4
        started = time.perf_counter()
        await batcher.submit(items(9))  # alone now: runs once the window has passed
        assert time.perf_counter() - started >= 0.05
        assert [len(b) for b in recorder.batches] == [4, 1]
        await batcher.close()

    run(main)


def test_past_the_knee_timed_at_warm_up_a_batch_starts_without_gathering() -> None:
    metrics = Metrics()

    def per_item_cost(batch: np.ndarray) -> Sequence[np.ndarray]:
        time.sleep(0.02 * len(batch))  # no fixed cost per run: one item is already past the knee
        return (batch * 2,)

    async def main() -> None:
        batcher = make(per_item_cost, metrics, max_batch_items=4, max_gather_s=60.0)
        await batcher.warm_up(items(0), [1, 2, 4])
        await asyncio.gather(*(batcher.submit(items(i)) for i in range(3)))
        # Three callers were served; one comes back alone and runs at once (60 s would time out).
        await asyncio.wait_for(batcher.submit(items(9)), timeout=5)
        await batcher.close()

    run(main)
