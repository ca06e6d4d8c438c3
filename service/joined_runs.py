"""The device executor's runs (service/executor.py): each joins the waiting batches of one graph.

A worker thread's batch is a Job; its answer goes back on the thread's WorkerChannel, through the
executor's shared-memory segment for that connection. A graph's Runner runs one batch at a time:
at once on the receiving thread when nothing waits, else on its own thread, which joins every
waiting job of the same item shape and outputs, up to the batch limit, into one run.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from repository.runtime import Graph
from service.shared_arrays import Segment

log = logging.getLogger(__name__)

_BATCHES = (1, 2, 4, 8, 16, 32, 64)


class ExecutorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Counter("vae_executor_runs", "graph runs of the device executor", registry=self.registry)
        self.batches = Histogram(
            "vae_executor_run_batches",
            "workers' batches joined in one run of the device executor",
            buckets=_BATCHES,
            registry=self.registry,
        )
        self.items = Counter("vae_executor_items", "items run by the device executor", registry=self.registry)
        self.open_graphs = Gauge(
            "vae_executor_open_graphs", "graph sessions the device executor holds", registry=self.registry
        )


class WorkerChannel:
    """The executor's end of one worker thread's connection: where that thread's answers go."""

    def __init__(self, connection: Connection, segment: Segment) -> None:
        self._connection = connection
        self._segment = segment
        self._lock = threading.Lock()
        self._open = True

    def answer(self, outputs: dict[str, np.ndarray]) -> None:
        with self._lock:
            if not self._open:
                return
            try:
                segment, layout = self._segment.write(outputs)
            except OSError as exc:
                self._send(("error", no_room(exc)))
                return
            self._send(("ran", segment, layout))

    def fail(self, message: str) -> None:
        with self._lock:
            if self._open:
                self._send(("error", message))

    def _send(self, message: tuple[object, ...]) -> None:
        try:
            self._connection.send(message)
        except OSError:  # the worker is gone; its supervisor replaces it
            self._open = False

    def close(self) -> None:
        with self._lock:
            self._open = False
            self._segment.close()


def no_room(exc: OSError) -> str:
    return f"no room for a batch in shared memory ({exc}): give /dev/shm more (docker: shm_size, docs/gpu.md)"


@dataclass(frozen=True)
class Job:
    """One worker batch: its inputs (views of the worker's segment, unchanged until answered)."""

    channel: WorkerChannel
    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    items: int

    @property
    def key(self) -> tuple[object, ...]:
        """Jobs of equal keys can run as one: the same outputs of items of the same shapes."""
        shapes = tuple((name, a.dtype.str, a.shape[1:]) for name, a in self.feeds.items())
        return (self.outputs, shapes)


class Runner:
    """One graph's runs: each takes the oldest waiting job and every later one it can join.

    A job that finds nothing waiting or running runs at once on the thread that received it: a
    lone caller's batch then crosses no second thread. Others queue for the graph's thread, which
    joins them; one run at a time either way.
    """

    def __init__(self, graph: Graph, max_items: int, metrics: ExecutorMetrics) -> None:
        self.graph = graph
        self._max_items = max_items
        self._metrics = metrics
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._running = threading.Lock()
        self._state = threading.Lock()
        self._queued = 0  # jobs submitted to the thread and not yet run
        self._thread = threading.Thread(target=self._work, name=graph.path.name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._state:
            alone = self._queued == 0 and self._running.acquire(blocking=False)
            if not alone:
                self._queued += 1
        if not alone:
            self._jobs.put(job)
            return
        try:
            run_jobs(self.graph, [job], self._metrics)
        finally:
            self._running.release()

    def stop(self) -> None:
        """Run what waits, then end the thread."""
        self._jobs.put(None)

    def _work(self) -> None:
        waiting: deque[Job] = deque()
        stopping = False
        while waiting or not stopping:
            if not waiting:
                job = self._jobs.get()
                if job is None:
                    stopping = True
                    continue
                waiting.append(job)
            with self._running:
                # What came while an inline run held the graph joins this run too.
                stopping = self._take_queued(waiting) or stopping
                jobs = take_joinable(waiting, self._max_items)
                try:
                    run_jobs(self.graph, jobs, self._metrics)
                finally:
                    with self._state:
                        self._queued -= len(jobs)

    def _take_queued(self, waiting: deque[Job]) -> bool:
        """Move what the queue holds to `waiting`; whether the stop came with it."""
        stopping = False
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return stopping
            if job is None:
                stopping = True
            else:
                waiting.append(job)


def run_jobs(graph: Graph, jobs: Sequence[Job], metrics: ExecutorMetrics) -> None:
    """Run joinable jobs as one batch and answer each with its own rows (or all with the error)."""
    head = jobs[0]
    try:
        feeds = head.feeds
        if len(jobs) > 1:
            feeds = {name: np.concatenate([job.feeds[name] for job in jobs]) for name in head.feeds}
        outputs = graph.run(feeds, head.outputs)
    except Exception as exc:  # the workers fail these batches; their logs name the graph
        log.exception("%s: a run of %d batches failed", graph.path, len(jobs))
        for job in jobs:
            job.channel.fail(f"{type(exc).__name__}: {exc}")
        return
    metrics.runs.inc()
    metrics.batches.observe(len(jobs))
    start = 0
    for job in jobs:
        job.channel.answer({name: value[start : start + job.items] for name, value in outputs.items()})
        start += job.items
    metrics.items.inc(start)


def take_joinable(waiting: deque[Job], max_items: int) -> list[Job]:
    """The oldest job and every later one of its key that fits within max_items, in order."""
    head = waiting.popleft()
    jobs, items, key = [head], head.items, head.key
    kept: deque[Job] = deque()
    while waiting:
        job = waiting.popleft()
        if job.key == key and items + job.items <= max_items:
            jobs.append(job)
            items += job.items
        else:
            kept.append(job)
    waiting.extend(kept)
    return jobs
