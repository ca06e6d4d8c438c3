"""A worker's side of the device executor (service/executor.py): graphs that run in that process.

`ExecutorGraphs.open` asks the executor for a graph (it opens it once for every worker) and gives
back a RemoteGraph, which the batchers run as they would a local Graph. Each thread that runs
batches (one per batcher) has its own connection and input segment, so a thread's batch waits only
for its own answer, and the executor can join batches of several threads and workers.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import numpy as np

from repository.errors import RepositoryError
from service.executor import SOCKET_NAME, GraphDescription
from service.graph_sources import ServedGraph
from service.joined_runs import no_room
from service.shared_arrays import Reader, Segment

log = logging.getLogger(__name__)


class ExecutorError(RuntimeError):
    """The executor could not run a batch (its log has the traceback), or is gone."""


class ConnectionLost(ExecutorError):
    """The connection to the executor broke: the thread's next batch opens a new one."""


class _ThreadChannel:
    """One thread's connection to the executor, its input segment and the executor's answers."""

    def __init__(self, directory: Path, number: int) -> None:
        self._connection = Client(str(directory / SOCKET_NAME), family="AF_UNIX")
        self._segment = Segment(directory, f"in-{os.getpid()}-{number}")
        self._reader = Reader(directory)
        # The thread's storage goes when the thread ends (a batcher closed): so do its file and socket.
        weakref.finalize(self, _close, self._segment, self._connection)

    def run(self, graph_id: int, feeds: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        try:
            segment, layout = self._segment.write(feeds)
        except OSError as exc:
            raise ExecutorError(no_room(exc)) from None
        try:
            self._connection.send(("run", graph_id, segment, layout, tuple(names)))
            reply: tuple[Any, ...] = self._connection.recv()
        except (EOFError, OSError) as exc:
            raise ConnectionLost(f"the connection to the device executor broke ({exc!r})") from None
        if reply[0] == "error":
            raise ExecutorError(f"the device executor: {reply[1]}")
        # Copies: the executor writes this thread's next answer over these bytes.
        return {name: view.copy() for name, view in self._reader.read(reply[1], reply[2]).items()}


def _close(segment: Segment, connection: Connection) -> None:
    segment.close()
    connection.close()


class ExecutorGraphs:
    """Graphs opened in the device executor whose socket is in `directory`; a connection per thread."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._control = Client(str(directory / SOCKET_NAME), family="AF_UNIX")
        self._opening = threading.Lock()  # one open's request and reply at a time
        # Sends on the control connection; a release (from the event loop) waits for no open's reply.
        self._sending = threading.Lock()
        self._local = threading.local()
        self._numbers = itertools.count(1)

    def open(self, path: Path, sha256: str) -> RemoteGraph:
        """The executor's graph of `path`, whose contents the worker verified to hash to `sha256`."""
        with self._opening:
            try:
                with self._sending:
                    self._control.send(("open", str(path), sha256))
                reply: tuple[Any, ...] = self._control.recv()
            except (EOFError, OSError) as exc:
                raise RepositoryError(f"{path}: the device executor is gone ({exc!r})") from None
        if reply[0] == "error":
            raise RepositoryError(f"{path}: the device executor: {reply[1]}")
        return RemoteGraph(self, reply[1], reply[2])

    def release(self, graph: ServedGraph) -> None:
        assert isinstance(graph, RemoteGraph), "a graph this source opened"
        with self._sending:
            try:
                self._control.send(("release", graph.graph_id))
            except OSError:  # the executor is gone, and its graphs with it; the service is stopping
                log.warning("%s not given back: the device executor is gone", graph.path)

    def run(self, graph_id: int, feeds: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        """A batch through this thread's connection, opened on its first batch or after one broke."""
        channel: _ThreadChannel | None = getattr(self._local, "channel", None)
        if channel is None:
            channel = self._local.channel = _ThreadChannel(self._directory, next(self._numbers))
        try:
            return channel.run(graph_id, feeds, names)
        except ConnectionLost:
            self._local.channel = None  # its finalizer closes the socket and removes the segment
            raise


class RemoteGraph:
    """A graph open in the device executor, run as service/loading.py runs a local Graph."""

    def __init__(self, graphs: ExecutorGraphs, graph_id: int, description: GraphDescription) -> None:
        self._graphs = graphs
        self.graph_id = graph_id
        self.path = description.path
        self.provider = description.provider
        self.inputs = description.inputs
        self.outputs = description.outputs
        self._words = description.words

    def describe(self) -> str:
        return f"{self._words}, in the device executor"

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names is not None else [spec.name for spec in self.outputs]
        return self._graphs.run(self.graph_id, feeds, names)
