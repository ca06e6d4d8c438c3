"""Where a version's graphs are opened: sessions of this process, or the device executor's.

service/loading.py opens a version's graphs from a GraphSource and gives them back when the version
stops serving; service/executor_client.py's ExecutorGraphs is the other source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from repository.placement import Placement
from repository.runtime import Graph
from service.config import ServiceConfig


class ServedGraph(Protocol):
    """What the batchers run: a local Graph, or service/executor_client.py's RemoteGraph."""

    provider: str

    def describe(self) -> str: ...
    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]: ...


class GraphSource(Protocol):
    """Where a version's graphs are opened: in this process, or in the device executor."""

    def open(self, path: Path, sha256: str) -> ServedGraph: ...  # a file the caller verified
    def release(self, graph: ServedGraph) -> None: ...  # its version no longer serves


class LocalGraphs:
    """Sessions in this process, on `placement` (the device executor opens its own through it)."""

    def __init__(self, config: ServiceConfig, placement: Placement) -> None:
        self._config = config
        self._placement = placement

    def open(self, path: Path, sha256: str) -> Graph:
        return Graph(
            path,
            intra_op_threads=self._config.intra_op_threads,
            inter_op_threads=self._config.inter_op_threads,
            spinning=self._config.spinning,
            placement=self._placement,
        )

    def release(self, graph: ServedGraph) -> None:
        """Nothing to do: a session ends with the last batch that holds it."""


def release_all(source: GraphSource, graphs: Sequence[ServedGraph]) -> None:
    """Give every graph in `graphs` back to the source that opened it."""
    for graph in graphs:
        source.release(graph)
