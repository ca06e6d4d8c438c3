"""Dynamic batching: merge the items of concurrent requests into batches for one `run_batch` callable.

Items, not requests, are the unit. A request of n items joins the queue if the work ahead of it can
run before its deadline (service/admission.py); a batch takes up to `max_batch_items` items from the head,
splitting a request that does not fit, and runs in a worker thread so the event loop keeps serving.
When to start a batch: callers in a closed loop come back after their answer, so after a batch
that served n requests while q more queued, the next starts as soon as n + q requests are queued,
or after `max_gather_s` if fewer come, or at once when enough items wait: a full batch, or (once
warm_up has timed every batch size) the size past which a batch no longer costs less per item. A lone caller
(n = 1, q = 0) never waits; 64 callers grow their batches to about 64, not to whatever arrived
during the last run (on a busy core, next to nothing: the event loop could not run to parse
requests). Each run has a fixed cost, so fewer, larger batches leave more of a small machine's
cores to the event loop and the clients.
A fixed `max_delay_s` instead waits that long after the first item of every batch.
Requests that were cancelled or whose deadline passed are dropped before their items run.

The batcher knows nothing of gRPC or ONNX: `run_batch(items) -> outputs` takes one array whose
first axis is the items (or, for a conditional model, Labelled: that array and one label per item,
sliced and joined alongside it) and returns arrays with the same first axis, which are checked and
scattered.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from service.admission import Admission
from service.batch_requests import QueuedRequest, Slice
from service.batch_types import (
    BatcherClosed,
    BatchFailed,
    BatchObserver,
    BatchTracer,
    Expired,
    ExpiryGroup,
    Items,
    Outcome,
    Result,
    RunBatch,
    item_bytes,
    join,
)
from service.warm_up import knee

log = logging.getLogger(__name__)

# A worker job: the loop to report to, the callback that takes the outcome, the parts to concatenate.
_Job = tuple[asyncio.AbstractEventLoop, Callable[[Outcome], None], list[Items]]


class Batcher:
    """Batches for one graph of one model version."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_items: int,
        max_delay_s: float,
        max_queue_items: int,
        observer: BatchObserver,
        name: str = "batcher",
        max_gather_s: float = 0.0,
        max_queue_delay_s: float = 0.0,
        max_queue_bytes: int = 0,
        tracer: BatchTracer | None = None,
    ) -> None:
        if max_batch_items < 1 or max_queue_items < max_batch_items or max_delay_s < 0:
            raise ValueError(
                "need max_batch_items >= 1, max_queue_items >= max_batch_items, max_delay_s >= 0"
            )
        self._run_batch = run_batch
        self.max_batch_items = max_batch_items
        self._max_delay_s = max_delay_s
        self._admission = Admission(
            name,
            max_queue_items=max_queue_items,
            max_queue_delay_s=max_queue_delay_s,
            max_queue_bytes=max_queue_bytes,
        )
        self._observer = observer
        self._tracer = tracer
        self._name = name
        # One worker thread: batches of one graph run one after another, each using onnxruntime's
        # own intra-op threads; a second batch in flight would only compete for the same cores.
        # A bare queue and one call_soon_threadsafe per batch: an executor's futures cost the event
        # loop more per batch, and that is the throughput of a small machine.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()
        self._queue: deque[QueuedRequest] = deque()
        self._queued = 0  # items admitted but not yet handed to a batch
        self._running = False
        self._running_items = 0
        self._timer: asyncio.Handle | None = None
        self._closed = False
        self._max_gather_s = max_gather_s
        # Requests the next batch waits for: those of the last batch, which come back in a closed
        # loop, and those that queued while it ran.
        self._expected = 1
        self._gathering = False  # the pending timer is a gather, which an arrival may cut short
        self.enough_items = max_batch_items  # queued items that start a batch at once; see warm_up
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def idle(self) -> bool:
        """Nothing queued or running: closing it now waits for nothing."""
        return self._idle.is_set()

    @property
    def queued_items(self) -> int:
        return self._queued

    @property
    def item_seconds(self) -> float:
        """Admission's measured cost per item of a full batch (0 before warm_up)."""
        return self._admission.item_seconds

    def admit_work(self, count: int, deadline: float | None, group: ExpiryGroup | None = None) -> None:
        """Refuse now (Expired, QueueFull) work of `count` items that will come in parts, as submit would.

        A request that queues its items a few batches at a time (Score's decoder draws) is judged
        by all of its work before any of it runs, instead of failing half-way.
        """
        self._timely(count, deadline, group)

    def _timely(self, count: int, deadline: float | None, group: ExpiryGroup | None) -> None:
        try:
            self._admission.check_time(self._queued + self._running_items, count, deadline)
        except Expired:
            if group is None or group.first_expiry():
                self._observer.request_expired()
            raise

    async def submit(
        self,
        items: Items,
        deadline: float | None = None,
        trace: Any = None,
        group: ExpiryGroup | None = None,
    ) -> Result:
        """Run `items` (first axis: items) as part of batches; `deadline` is a time.perf_counter() value.

        `trace`, when not None, is handed to the tracer with every batch the items run in. Requests
        of one `group` (one call's parts) count one expiry between them.
        """
        if self._closed:
            raise BatcherClosed("the server is shutting down or reloading this model; retry")
        count = len(items)
        if count < 1:
            raise ValueError("a request needs at least one item")
        self._admission.check_items(self._queued, count, item_bytes(items) // count)
        self._timely(count, deadline, group)
        loop = asyncio.get_running_loop()
        request = QueuedRequest(items, deadline, loop.create_future(), trace, group)
        self._queue.append(request)
        self._queued += count
        self._idle.clear()
        self._observer.queued(count)
        if not self._running:
            if self._queued >= self.max_batch_items:
                self._dispatch()
            elif self._max_delay_s:
                if self._timer is None:
                    self._timer = loop.call_later(self._max_delay_s, self._dispatch)
            elif len(self._queue) >= self._expected or self._queued >= self.enough_items:
                if self._gathering:
                    self._dispatch()
                elif self._timer is None:
                    # call_soon still lets requests handled in this loop iteration join the batch.
                    self._timer = loop.call_soon(self._dispatch)
            elif self._timer is None:
                self._gather(loop)
        return await request.future

    def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the callers of the last batch to come back, at most max_gather_s."""
        self._gathering = True
        self._timer = loop.call_later(self._max_gather_s, self._dispatch)

    def _dispatch(self) -> None:
        """Hand the head of the queue, up to max_batch_items items, to the worker thread."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._gathering = False
        if self._running:
            return
        before = self._queued
        batch = self._take()
        self._observer.queued(self._queued - before)
        if not batch:
            self._set_idle()
            return
        self._running = True
        self._running_items = sum(count for _, _, count in batch)
        parts = [request.items[first : first + count] for request, first, count in batch]
        self._jobs.put((asyncio.get_running_loop(), partial(self._finish, batch), parts))

    def _take(self) -> list[Slice]:
        """Slices from the head of the queue; drops cancelled and expired requests on the way."""
        batch: list[Slice] = []
        room = self.max_batch_items
        now = time.perf_counter()
        while self._queue and room:
            request = self._queue[0]
            pending = len(request.items) - request.next
            # gRPC may already have cancelled a request whose deadline passed: it still counts as expired.
            expired = request.deadline is not None and request.deadline <= now
            if expired or request.future.done():
                self._queue.popleft()
                self._queued -= pending
                if expired and request.counts_expiry():
                    self._observer.request_expired()
                if not request.future.done():
                    request.future.set_exception(Expired("deadline passed while queued"))
                continue
            take = min(pending, room)
            batch.append((request, request.next, take))
            request.next += take
            room -= take
            self._queued -= take
            if request.next == len(request.items):
                self._queue.popleft()
        return batch

    def _work(self) -> None:
        """Worker thread: run each job's parts as one contiguous batch, hand the outcome to the loop."""
        while (job := self._jobs.get()) is not None:
            loop, done, parts = job
            started = time.perf_counter()
            outcome: Outcome
            try:
                outputs = self._run_batch(join(parts))
                outcome = outputs, time.perf_counter() - started, started
            except Exception as exc:  # reported on the loop, with its traceback
                outcome = exc
            loop.call_soon_threadsafe(done, outcome)

    def _finish(self, batch: list[Slice], outcome: Outcome) -> None:
        """Event loop: scatter a batch's outputs to its requests, then start the next batch."""
        self._running = False
        self._running_items = 0
        items = sum(count for _, _, count in batch)
        try:
            if isinstance(outcome, Exception):
                raise outcome
            outputs, seconds, started = outcome
            self._check(outputs, items)
        except Exception:
            log.exception("%s: a batch of %d items from %d requests failed", self._name, items, len(batch))
            for request, _, _ in batch:
                if not request.future.done():
                    request.future.set_exception(
                        BatchFailed("inference failed; the server log has the details")
                    )
        else:
            self._observer.batch_ran(items, seconds)
            if items == self.max_batch_items:
                self._admission.measured(items, seconds)
            self._scatter(batch, outputs, seconds)
            if self._tracer is not None:
                self._trace(batch, items, started, seconds)
        # The callers just answered come back, and those already waiting stay: wait for all of them.
        self._expected = len(batch) + len(self._queue)
        if not self._queue:
            self._set_idle()
        elif self._queued >= self.enough_items:
            self._dispatch()
        else:
            self._gather(asyncio.get_running_loop())

    def _trace(self, batch: list[Slice], items: int, started: float, seconds: float) -> None:
        served = [
            (r.trace, r.admitted, count, first == 0) for r, first, count in batch if r.trace is not None
        ]
        if served and self._tracer is not None:
            self._tracer.batch_ran(self._name, served, items, started, seconds)

    def _check(self, outputs: Sequence[np.ndarray], items: int) -> None:
        """Outputs must match inputs one to one, or results would go to the wrong requests."""
        lengths = [len(output) for output in outputs]
        if not lengths or any(length != items for length in lengths):
            raise RuntimeError(f"run_batch returned first axes {lengths} for a batch of {items} items")

    def _scatter(self, batch: list[Slice], outputs: Sequence[np.ndarray], seconds: float) -> None:
        now = time.perf_counter()
        offset = 0
        for request, first, count in batch:
            piece = tuple(output[offset : offset + count] for output in outputs)
            offset += count
            if (
                not request.future.done()
                and (waited := request.deliver(first, piece, seconds, now)) is not None
            ):
                self._observer.request_waited(waited)

    def _set_idle(self) -> None:
        if not self._queue and not self._running:
            self._idle.set()

    async def warm_up(self, example: Items, sizes: Sequence[int]) -> None:
        """Run batches of every size in `sizes` (copies of example[0]) so none is first met under load."""
        loop = asyncio.get_running_loop()
        per_item: dict[int, float] = {}
        for size in sizes:
            done: asyncio.Future[Outcome] = loop.create_future()
            self._jobs.put((loop, done.set_result, [join([example[:1]] * size)]))
            outcome = await done
            if isinstance(outcome, Exception):
                raise outcome
            self._check(outcome[0], size)
            per_item[size] = outcome[1] / size
        largest = max(per_item)
        self._admission.measured(largest, per_item[largest] * largest)
        self.enough_items = knee(per_item)

    async def close(self) -> None:
        """Refuse new requests, let admitted ones finish, then stop the worker thread."""
        self._closed = True
        await self._idle.wait()
        self._jobs.put(None)
        await asyncio.to_thread(self._worker.join)
