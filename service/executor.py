"""`vae serve --workers N --device-executor`: one process runs every worker's batches on the device.

Independent workers each hold a session per graph, and so a CUDA context, a copy of every version
and a stream of their own, and their batches meet on the device only as time slices. Here the
workers keep everything of a request (gRPC, validation, admission, batching, metrics, drain,
reload) but run their batches through this process (service/executor_client.py): it holds one
session per graph, shared by every worker that loaded it, and joins the batches of one graph that
wait at the same time (same item shape, same outputs, up to the batch limit) into one run, so the
device sees batches formed across all callers. Arrays travel through shared memory
(service/shared_arrays.py); the messages on the Unix socket carry only their layout.

A graph stays open while any worker holds it: a worker that releases it (a reload, a version whose
files changed) or dies gives its hold back. The executor's own death ends the service
(service/workers.py): a new one would have to reload every version for every worker anyway.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from multiprocessing.connection import Connection, Listener
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from repository.manifest import file_sha256
from repository.placement import Placement
from repository.runtime import Graph, TensorSpec
from service.config import ServiceConfig
from service.metrics import serve_metrics
from service.shared_arrays import Reader, Segment

log = logging.getLogger(__name__)

SOCKET_NAME = "executor.sock"
_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class GraphDescription:
    """What a worker needs to know of a graph the executor opened for it."""

    path: Path
    provider: str
    words: str  # Graph.describe(): the startup line's provider, device and precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


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
            block = not waiting
            try:
                while True:
                    job = self._jobs.get(block=block)
                    block = False
                    if job is None:
                        stopping = True
                    else:
                        waiting.append(job)
            except queue.Empty:
                pass
            if waiting:
                jobs = take_joinable(waiting, self._max_items)
                with self._running:
                    run_jobs(self.graph, jobs, self._metrics)
                with self._state:
                    self._queued -= len(jobs)


def run_jobs(graph: Graph, jobs: Sequence[Job], metrics: ExecutorMetrics) -> None:
    """Run joinable jobs as one batch and answer each with its own rows (or all with the error)."""
    head = jobs[0]
    feeds = head.feeds
    if len(jobs) > 1:
        feeds = {name: np.concatenate([job.feeds[name] for job in jobs]) for name in head.feeds}
    try:
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


@dataclass
class _Open:
    runner: Runner
    key: tuple[str, str]
    holds: int


class Executor:
    """The graphs every worker asked for, each open once, and the connections that use them."""

    def __init__(self, config: ServiceConfig, placement: Placement, directory: Path) -> None:
        self._config = config
        self._placement = placement
        self._directory = directory
        self.metrics = ExecutorMetrics()
        self._lock = threading.Lock()
        self._graphs: dict[int, _Open] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._next_id = count(1)
        self._connections = count(1)

    def serve(self, listener: Listener) -> None:
        """Accept workers' connections until the process ends (a thread per connection)."""
        while True:
            connection = listener.accept()
            number = next(self._connections)
            threading.Thread(
                target=self._serve_connection, args=(connection, number), name=f"conn-{number}", daemon=True
            ).start()

    def _serve_connection(self, connection: Connection, number: int) -> None:
        channel = WorkerChannel(connection, Segment(self._directory, f"out-{number}"))
        reader = Reader(self._directory)
        held: list[int] = []
        try:
            while True:
                message = connection.recv()
                if message[0] == "run":
                    _, graph_id, segment, layout, outputs = message
                    found = self._graphs.get(graph_id)
                    if found is None:
                        channel.fail(f"graph {graph_id} is not open")
                        continue
                    feeds = reader.read(segment, layout)
                    items = len(next(iter(feeds.values())))
                    found.runner.submit(Job(channel, feeds, tuple(outputs), items))
                elif message[0] == "open":
                    _, path, sha256 = message
                    try:
                        graph_id, description = self._open(Path(path), sha256)
                    except Exception as exc:  # the worker refuses the version with this reason
                        connection.send(("error", f"{type(exc).__name__}: {exc}"))
                        continue
                    held.append(graph_id)
                    connection.send(("opened", graph_id, description))
                elif message[0] == "release":
                    held.remove(message[1])
                    self._release(message[1])
        except (EOFError, OSError):  # the worker closed it, or died
            pass
        finally:
            for graph_id in held:
                self._release(graph_id)
            channel.close()
            connection.close()

    def _open(self, path: Path, sha256: str) -> tuple[int, GraphDescription]:
        key = (str(path.resolve()), sha256)
        with self._lock:
            graph_id = self._ids.get(key)
            if graph_id is None:
                # The worker verified these files; a graph replaced since must not be served as them.
                if file_sha256(path) != sha256:
                    raise ValueError(f"{path} changed on disk after the worker verified it")
                graph = Graph(
                    path,
                    intra_op_threads=self._config.intra_op_threads,
                    inter_op_threads=self._config.inter_op_threads,
                    spinning=self._config.spinning,
                    placement=self._placement,
                )
                graph_id = next(self._next_id)
                runner = Runner(graph, self._config.max_batch_items, self.metrics)
                self._graphs[graph_id] = _Open(runner, key, 0)
                self._ids[key] = graph_id
                self.metrics.open_graphs.set(len(self._graphs))
                log.info("opened %s: %s", path, graph.describe())
            entry = self._graphs[graph_id]
            entry.holds += 1
            graph = entry.runner.graph
        return graph_id, GraphDescription(path, graph.provider, graph.describe(), graph.inputs, graph.outputs)

    def _release(self, graph_id: int) -> None:
        with self._lock:
            entry = self._graphs[graph_id]
            entry.holds -= 1
            if entry.holds:
                return
            del self._graphs[graph_id]
            del self._ids[entry.key]
            self.metrics.open_graphs.set(len(self._graphs))
        entry.runner.stop()
        log.info("closed %s: no worker holds it", entry.runner.graph.path)


def serve_executor(config: ServiceConfig, placement: Placement, directory: Path, ready: Connection) -> None:
    """The executor process: listen on directory's socket, report the metrics port, serve until killed.

    SIGINT and SIGHUP are ignored: a Ctrl-C or a hang-up reaches the whole process group, and the
    workers' drains still need this process; the supervisor ends it with SIGTERM once they are done.
    """
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    executor = Executor(config, placement, directory)
    listener = Listener(str(directory / SOCKET_NAME), family="AF_UNIX")
    http = serve_metrics(0, "127.0.0.1", executor.metrics.registry)
    log.info(
        "device executor on %s; shared memory in %s; runs of at most %d items",
        placement.provider,
        directory,
        config.max_batch_items,
    )
    ready.send(http.server_port)
    ready.close()
    executor.serve(listener)
