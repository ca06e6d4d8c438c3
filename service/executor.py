"""`vae serve --workers N --device-executor`: one process runs every worker's batches on the device.

Independent workers each hold a session per graph, and so a CUDA context, a copy of every version
and a stream of their own, and their batches meet on the device only as time slices. Here the
workers keep everything of a request (gRPC, validation, admission, batching, metrics, drain,
reload) but run their batches through this process (service/executor_client.py): it holds one
session per graph, shared by every worker that loaded it, and joins the batches of one graph that
wait at the same time (same item shape, same outputs, up to the batch limit) into one run, so the
device sees batches formed across all callers. Arrays travel through shared memory
(service/shared_arrays.py); the messages on the Unix socket carry only their layout.

A graph stays open while any worker holds it: a worker that closes a version (files changed on disk,
a load that failed, its own stop) or dies gives its hold back. The executor's own death ends the
service (service/workers.py): a new one would have to reopen every version for every worker anyway.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from multiprocessing.connection import Connection, Listener
from pathlib import Path

from repository.manifest import file_sha256
from repository.placement import Placement
from repository.runtime import TensorSpec
from service.config import ServiceConfig
from service.graph_sources import LocalGraphs
from service.joined_runs import ExecutorMetrics, Job, Runner, WorkerChannel
from service.metrics import serve_metrics
from service.shared_arrays import Layout, Reader, Segment

log = logging.getLogger(__name__)

SOCKET_NAME = "executor.sock"


@dataclass(frozen=True)
class GraphDescription:
    """What a worker needs to know of a graph the executor opened for it."""

    path: Path
    provider: str
    words: str  # Graph.describe(): the startup line's provider, device and precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass
class _Open:
    runner: Runner
    key: tuple[str, str]
    holds: int


class Executor:
    """The graphs every worker asked for, each open once, and the connections that use them."""

    def __init__(self, config: ServiceConfig, placement: Placement, directory: Path) -> None:
        self._config = config
        self._sessions = LocalGraphs(config, placement)
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
                    self._run(channel, reader, *message[1:])
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

    def _run(
        self,
        channel: WorkerChannel,
        reader: Reader,
        graph_id: int,
        segment: str,
        layout: Layout,
        outputs: Sequence[str],
    ) -> None:
        """A worker's batch to its graph's runner; what goes wrong before it runs fails that batch only."""
        found = self._graphs.get(graph_id)
        if found is None:
            channel.fail(f"graph {graph_id} is not open")
            return
        try:
            feeds = reader.read(segment, layout)
        except (OSError, ValueError) as exc:
            channel.fail(f"the batch's inputs could not be read from {segment}: {exc}")
            return
        found.runner.submit(Job(channel, feeds, tuple(outputs), len(next(iter(feeds.values())))))

    def _open(self, path: Path, sha256: str) -> tuple[int, GraphDescription]:
        key = (str(path.resolve()), sha256)
        with self._lock:
            graph_id = self._ids.get(key)
            if graph_id is None:
                # The worker verified these files; a graph replaced since must not be served as them.
                if file_sha256(path) != sha256:
                    raise ValueError(f"{path} changed on disk after the worker verified it")
                graph = self._sessions.open(path, sha256)
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

    SIGINT, SIGTERM and SIGHUP are ignored: a Ctrl-C, a hang-up or a stop of the whole process group
    (systemd, `kill -- -PGID`) reaches it with the workers, whose drains still need it; the supervisor
    kills it once they are done, and the kernel when the supervisor dies.
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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
