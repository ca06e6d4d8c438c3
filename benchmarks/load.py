"""Closed-loop gRPC load: P client processes x C/P asyncio callers, each sending one request after another.

The request is serialized once and sent as raw bytes, and responses are not parsed: the client
spends its CPU on gRPC alone, which matters on a small machine where it shares the cores with the
server, and every server under test gets exactly the same load. Callers in every process start
together (a shared start time), run `warmup` seconds unrecorded, then `duration` seconds in which
each call that completes is recorded: its latency when it succeeded, its status code when not.
"""

from __future__ import annotations

import array
import asyncio
import multiprocessing as mp
import os
import queue
import time
from collections import Counter
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any, TypeAlias

import grpc
import numpy as np

from benchmarks.processes import pin
from wire.channel import ClientTls, call_metadata

# Connecting and the first call must not wait forever on a target that is not there.
READY_TIMEOUT_S = 30.0
# After the window, how long the parent waits for workers to finish their last calls and report.
DRAIN_TIMEOUT_S = 30.0
PROGRESS_INTERVAL_S = 0.5
# Room for the largest requests and responses (Sample n=4096 float32 images is 12.8 MB).
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 2**20),
    ("grpc.max_send_message_length", 256 * 2**20),
]
# One clock for every process: CLOCK_MONOTONIC is system-wide on Linux, so the parent can hand all
# workers one start time.
clock = time.monotonic
# Worker -> parent: ("ready" | "done" | "failed", process slot, detail).
Messages: TypeAlias = "Queue[tuple[str, int, Any]]"


@dataclass(frozen=True)
class Workload:
    """One kind of call: a gRPC method path, the serialized request sent every time, its item count."""

    method: str  # e.g. "/vae.v1.VaeService/Decode"
    request: bytes
    items: int


def call_once(
    target: str,
    workload: Workload,
    timeout: float = 30.0,
    *,
    tls: ClientTls | None = None,
    token: str | None = None,
) -> bytes:
    """Send the workload's request once and return the raw response; raises grpc.RpcError."""
    channel = (
        grpc.secure_channel(target, tls.credentials(), options=CHANNEL_OPTIONS)
        if tls
        else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    )
    with channel:
        call = channel.unary_unary(workload.method, request_serializer=None, response_deserializer=None)
        response: bytes = call(workload.request, timeout=timeout, metadata=call_metadata(token))
    return response


@dataclass(frozen=True)
class LoadResult:
    """What the measured window saw."""

    seconds: float
    latencies: np.ndarray  # seconds, one per successful call
    errors: dict[str, int]  # gRPC status name -> calls that failed with it

    @property
    def requests(self) -> int:
        return len(self.latencies)


@dataclass(frozen=True)
class Progress:
    elapsed: float  # since the start, warmup included
    measuring: bool
    completed: int  # calls completed so far, successful or not, by all processes


def run(
    target: str,
    workload: Workload,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    processes: int = 1,
    timeout: float = 30.0,
    on_progress: Callable[[Progress], None] | None = None,
    on_window: Callable[[str], None] | None = None,
    cpus: Set[int] | None = None,
    tls: ClientTls | None = None,
    token: str | None = None,
) -> LoadResult:
    """Drive `target` with `workload`; `on_window("start")` and `("end")` mark the measured window.

    With `cpus`, the client processes run on those CPUs only (the suite's pinned mode). `tls` and
    `token`: as `vae client`'s --tls* and --token-file.
    """
    if concurrency < 1 or processes < 1 or duration <= 0 or warmup < 0:
        raise ValueError("need concurrency >= 1, processes >= 1, duration > 0 and warmup >= 0")
    processes = min(processes, concurrency)
    # spawn, not fork: grpc's threads do not survive a fork of a process that has used grpc.
    ctx = mp.get_context("spawn")
    start = ctx.RawValue("d", 0.0)
    completed = ctx.RawArray("q", processes)
    go = ctx.Event()
    messages: Messages = ctx.Queue()
    workers = []
    for slot in range(processes):
        callers = concurrency // processes + (slot < concurrency % processes)
        job = _Job(target, workload, callers, timeout, warmup, duration, slot, cpus, tls, token)
        workers.append(ctx.Process(target=_worker, args=(job, start, completed, go, messages), daemon=True))
    for worker in workers:
        worker.start()
    try:
        _wait_ready(messages, workers)
        start.value = clock() + 0.05  # a moment for every worker to wake up on `go`
        go.set()
        _watch(start.value, warmup, duration, completed, on_progress, on_window)
        return _collect(messages, len(workers), duration)
    finally:
        for worker in workers:
            worker.join(timeout=DRAIN_TIMEOUT_S)
            if worker.is_alive():
                worker.terminate()


def _wait_ready(messages: Messages, workers: Sequence[BaseProcess]) -> None:
    deadline = clock() + READY_TIMEOUT_S
    ready = 0
    while ready < len(workers):
        try:
            kind, slot, detail = messages.get(timeout=0.5)
        except queue.Empty:
            if any(not worker.is_alive() for worker in workers):
                raise RuntimeError("a load process exited before it was ready") from None
            if clock() > deadline:
                raise RuntimeError(f"load processes not ready after {READY_TIMEOUT_S:.0f} s") from None
            continue
        if kind == "failed":
            raise RuntimeError(f"load process {slot}: {detail}")
        ready += 1


def _watch(
    start: float,
    warmup: float,
    duration: float,
    completed: Sequence[int],
    on_progress: Callable[[Progress], None] | None,
    on_window: Callable[[str], None] | None,
) -> None:
    """Parent: mark the window's edges and report progress while the workers run."""
    window_start, window_end = start + warmup, start + warmup + duration
    started = False
    while (now := clock()) < window_end:
        if not started and now >= window_start:
            started = True
            if on_window:
                on_window("start")
        if on_progress:
            on_progress(Progress(max(0.0, now - start), started, sum(completed)))
        next_tick = min(now + PROGRESS_INTERVAL_S, window_end if started else window_start)
        time.sleep(max(0.0, next_tick - clock()))
    if not started and on_window:
        on_window("start")
    if on_window:
        on_window("end")
    if on_progress:
        on_progress(Progress(warmup + duration, True, sum(completed)))


def _collect(messages: Messages, workers: int, duration: float) -> LoadResult:
    latencies: list[np.ndarray] = [np.empty(0)]
    errors: Counter[str] = Counter()
    for _ in range(workers):
        kind, slot, detail = messages.get(timeout=DRAIN_TIMEOUT_S + READY_TIMEOUT_S)
        if kind != "done":
            raise RuntimeError(f"load process {slot}: {detail}")
        raw, codes = detail
        latencies.append(np.frombuffer(raw, dtype=np.float64))
        errors.update(codes)
    return LoadResult(duration, np.concatenate(latencies), dict(errors))


# --- the worker process ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    target: str
    workload: Workload
    callers: int
    timeout: float
    warmup: float
    duration: float
    slot: int
    cpus: Set[int] | None
    tls: ClientTls | None
    token: str | None


def _worker(job: _Job, start: Any, completed: Any, go: Event, messages: Messages) -> None:
    """Child process: `start` (a shared double) and `completed` (shared int64 per process) come from run()."""
    if job.cpus:
        pin([os.getpid()], job.cpus)  # before gRPC starts its threads; numpy's are pinned too
    try:
        asyncio.run(_drive(job, start, completed, go, messages))
    except Exception as exc:
        messages.put(("failed", job.slot, f"{type(exc).__name__}: {exc}"))


async def _drive(job: _Job, start: Any, completed: Any, go: Event, messages: Messages) -> None:
    channel = (
        grpc.aio.secure_channel(job.target, job.tls.credentials(), options=CHANNEL_OPTIONS)
        if job.tls
        else grpc.aio.insecure_channel(job.target, options=CHANNEL_OPTIONS)
    )
    metadata = call_metadata(job.token)
    async with channel:
        await asyncio.wait_for(channel.channel_ready(), READY_TIMEOUT_S)
        # No (de)serializers: the request goes as the bytes given and the response comes back as bytes.
        call = channel.unary_unary(job.workload.method, request_serializer=None, response_deserializer=None)
        messages.put(("ready", job.slot, None))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        window_start = start.value + job.warmup
        window_end = window_start + job.duration
        latencies = array.array("d")
        errors: Counter[str] = Counter()
        count = 0

        async def caller() -> None:
            nonlocal count
            request, timeout, slot = job.workload.request, job.timeout, job.slot
            while (sent := clock()) < window_end:
                try:
                    await call(request, timeout=timeout, metadata=metadata)
                    code = None
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                done = clock()
                count += 1
                completed[slot] = count
                if window_start <= done <= window_end:
                    if code is None:
                        latencies.append(done - sent)
                    else:
                        errors[code] += 1

        await asyncio.sleep(max(0.0, start.value - clock()))
        await asyncio.gather(*(caller() for _ in range(job.callers)))
    messages.put(("done", job.slot, (latencies.tobytes(), dict(errors))))
