"""The ceiling: onnxruntime called in-process (no gRPC, no batcher), on the service's own session settings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repository.runtime import Graph
from repository.tensor_names import GRAPHS, LOGVAR, MU, PROBS
from service.config import ServiceConfig

# The outputs the service asks for: it never copies the decoder's logits back.
OUTPUTS = {"encoder": (MU, LOGVAR), "decoder": (PROBS,)}


@dataclass(frozen=True)
class Point:
    graph: str
    batch: int
    items_per_s: float  # batch / median time per run
    ms_per_batch: float  # median


def load_graphs(version_dir: Path) -> dict[str, Graph]:
    """Both graphs with the thread and spinning settings `vae serve` uses by default."""
    config = ServiceConfig()
    return {
        graph: Graph(
            version_dir / f"{graph}.onnx",
            intra_op_threads=config.intra_op_threads,
            inter_op_threads=config.inter_op_threads,
            spinning=config.spinning,
        )
        for graph in GRAPHS
    }


def sweep(graphs: dict[str, Graph], batches: Sequence[int], seconds: float, seed: int = 0) -> list[Point]:
    """Each graph at each batch size, run back to back for about `seconds` after one untimed run."""
    rng = np.random.default_rng(seed)
    points = []
    for name, graph in graphs.items():
        (spec,) = graph.inputs
        item_shape = tuple(int(dim) for dim in spec.shape[1:])
        for batch in batches:
            feeds = {spec.name: rng.random((batch, *item_shape), dtype=np.float32)}
            graph.run(feeds, OUTPUTS[name])
            times: list[float] = []
            started = time.perf_counter()
            while time.perf_counter() - started < seconds or len(times) < 3:
                t0 = time.perf_counter()
                graph.run(feeds, OUTPUTS[name])
                times.append(time.perf_counter() - t0)
            # The median, not the mean: a shared machine's stalls should not lower the ceiling.
            median = float(np.median(times))
            points.append(Point(name, batch, batch / median, median * 1e3))
    return points
