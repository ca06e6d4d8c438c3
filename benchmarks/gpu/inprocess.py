"""In-process figures: each way of running a graph on the device, batch by batch, and CPU/device parity.

Every cell is one graph at one batch size run one way: an untimed run, then runs back to back for
about `cell_s` seconds (at least MIN_RUNS); the figure is the median run. A cell that would start
after the deadline is recorded as skipped, so the sweep ends in time whatever the device.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu import torch_eager
from repository.manifest import Manifest
from repository.placement import CPU, Placement
from repository.runtime import DATA_PATHS, DataPath, Graph
from repository.tensor_names import GRAPHS, IMAGES, LATENTS, LOGVAR, MU, PROBS
from service.config import ServiceConfig
from service.executor_client import ExecutorGraphs, RemoteGraph
from service.shared_arrays import run_directory
from service.workers import start_executor

MIN_RUNS = 3
# The outputs the service asks for: it never copies the decoder's logits back.
OUTPUTS = {"encoder": (MU, LOGVAR), "decoder": (PROBS,)}
PLAIN = "ort-plain"
RESIDENT = "ort-device-resident"
TORCH = "torch-eager"
EXECUTOR = "graph-in-executor"
GRAPH_METHODS: dict[str, DataPath] = {f"graph-{path}": path for path in DATA_PATHS}
# The sweep's rows: a bare session.run on Graph's own session, Graph.run on each data path, the
# same graph run from another process through the device executor (service/executor.py: its hop
# and shared-memory copies), the device-resident ceiling, and torch on the same weights.
METHODS = (PLAIN, *GRAPH_METHODS, EXECUTOR, RESIDENT, TORCH)


def median_seconds(run: Callable[[], object], seconds: float) -> tuple[float, int]:
    """(median seconds per run, runs timed): one untimed run, then back to back for `seconds`."""
    run()
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < MIN_RUNS:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    # The median, not the mean: a shared host's stalls should not lower the figure.
    return float(np.median(times)), len(times)


def inputs(manifest: Manifest, graph: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random images in [0, 1] or latents from N(0, I): the cost does not depend on the values."""
    rng = np.random.default_rng(seed)
    if graph == "encoder":
        return {IMAGES: rng.random((batch, *manifest.image_shape), dtype=np.float32)}
    return {LATENTS: rng.standard_normal((batch, manifest.latent_dim), dtype=np.float32)}


def open_graphs(version_dir: Path, manifest: Manifest, placement: Placement) -> dict[str, Graph]:
    """Both graphs as the service opens them on one device (one intra-op thread: onnxruntime#20494)."""
    return {role: Graph(version_dir / manifest.graphs[role].file, placement=placement) for role in GRAPHS}


def sweep(
    version_dir: Path,
    manifest: Manifest,
    placement: Placement,
    batches: Sequence[int],
    cell_s: float,
    deadline: float,
) -> dict[str, Any]:
    """items/s for every graph, batch and method; each cell a number, or why there is none."""
    graphs = open_graphs(version_dir, manifest, placement)
    eager = torch_eager.load(version_dir, manifest, _device_name(placement))
    with executor_graphs(version_dir, manifest, placement, max(batches)) as remote:
        cells = _cells(graphs, remote, eager, manifest, batches, cell_s, deadline)
    return {
        "placement": asdict(placement),
        "sessions": {role: graph.describe() for role, graph in graphs.items()},
        "torch": _torch_about(graphs, manifest, eager),
        "cells": cells,
    }


@contextmanager
def executor_graphs(
    version_dir: Path, manifest: Manifest, placement: Placement, max_items: int
) -> Iterator[dict[str, RemoteGraph]]:
    """Both graphs opened in a device executor process of their own, stopped afterwards."""
    device = _device_name(placement)
    config = ServiceConfig(device=device, cuda_tf32=placement.tf32, max_batch_items=max_items)
    with tempfile.TemporaryDirectory(prefix="vae-bench-executor-", dir=run_directory()) as directory:
        process, _ = start_executor(config, Path(directory))
        try:
            source = ExecutorGraphs(Path(directory))
            yield {
                role: source.open(version_dir / manifest.graphs[role].file, manifest.graphs[role].sha256)
                for role in GRAPHS
            }
        finally:
            process.kill()  # it ignores SIGTERM
            process.join()


def _cells(
    graphs: dict[str, Graph],
    remote: dict[str, RemoteGraph],
    eager: torch_eager.Eager | str,
    manifest: Manifest,
    batches: Sequence[int],
    cell_s: float,
    deadline: float,
) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    for role, graph in graphs.items():
        for batch in batches:
            feeds = inputs(manifest, role, batch)
            for method in METHODS:
                cell: dict[str, Any] = {"graph": role, "batch": batch, "method": method}
                cells.append(cell)
                if time.monotonic() + cell_s > deadline:
                    cell["skipped"] = "budget"
                    continue
                if method == TORCH and isinstance(eager, str):
                    cell["skipped"] = eager
                    continue
                try:
                    run = _runner(method, graph, remote[role], role, feeds, eager)
                    median, runs = median_seconds(run, cell_s)
                except Exception as exc:  # one cell failing (out of memory, say) leaves the others
                    cell["error"] = f"{type(exc).__name__}: {exc}"
                    continue
                cell |= {"items_per_s": batch / median, "ms": median * 1e3, "runs": runs}
            _progress(role, batch, cells)
    return cells


def _device_name(placement: Placement) -> str:
    """The device as torch and `vae serve --device` name it."""
    return "cpu" if placement.provider == CPU else f"cuda:{placement.device_id}"


def _runner(
    method: str,
    graph: Graph,
    remote: RemoteGraph,
    role: str,
    feeds: dict[str, np.ndarray],
    eager: torch_eager.Eager | str,
) -> Callable[[], object]:
    names = OUTPUTS[role]
    if method == PLAIN:
        return lambda: graph.session.run(list(names), feeds)
    if method == EXECUTOR:
        return lambda: remote.run(feeds, names)
    if method == RESIDENT:
        return graph.device_resident(feeds, names)
    if method == TORCH and isinstance(eager, torch_eager.Eager):
        return eager.runner(role, next(iter(feeds.values())))
    path = GRAPH_METHODS[method]

    def run() -> object:
        graph.data_path = path
        return graph.run(feeds, names)

    return run


def _torch_about(
    graphs: dict[str, Graph], manifest: Manifest, eager: torch_eager.Eager | str
) -> dict[str, Any]:
    """torch's settings, and how far its outputs are from the graphs' (a check of the rebuilt weights)."""
    if isinstance(eager, str):
        return {"skipped": eager}
    diffs = {}
    for role, graph in graphs.items():
        feeds = inputs(manifest, role, 16)
        got = eager.runner(role, next(iter(feeds.values())))()
        want = graph.run(feeds, OUTPUTS[role]).values()
        diffs[role] = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want, strict=True))
    return {**eager.about, "max_abs_diff_vs_onnx": diffs}


def _progress(role: str, batch: int, cells: list[dict[str, Any]]) -> None:
    done = [c for c in cells if c["graph"] == role and c["batch"] == batch]
    figures = "  ".join(
        f"{c['method']} {c['items_per_s']:,.0f}/s" if "items_per_s" in c else f"{c['method']} —" for c in done
    )
    print(f"  {role} batch {batch}: {figures}", flush=True)


def parity(
    version_dir: Path,
    manifest: Manifest,
    placement: Placement,
    batch: int,
    speed_batches: Sequence[int],
    cell_s: float,
) -> dict[str, Any]:
    """Per TF32 setting: max |device - CPU| over every output of both graphs, and plain-run speed."""
    reference = open_graphs(version_dir, manifest, Placement(CPU))
    expected = {
        role: graph.run(inputs(manifest, role, batch, seed=1), OUTPUTS[role])
        for role, graph in reference.items()
    }
    settings = []
    for tf32 in (False, True):
        graphs = open_graphs(version_dir, manifest, replace(placement, tf32=tf32))
        setting: dict[str, Any] = {"tf32_asked": tf32, "sessions": {}, "max_abs_diff": {}, "items_per_s": {}}
        for role, graph in graphs.items():
            setting["sessions"][role] = graph.describe()
            got = graph.run(inputs(manifest, role, batch, seed=1), OUTPUTS[role])
            setting["max_abs_diff"][role] = max(
                float(np.max(np.abs(got[name] - expected[role][name]))) for name in OUTPUTS[role]
            )
            setting["items_per_s"][role] = {}
            for size in speed_batches:
                feeds = inputs(manifest, role, size)
                median, _ = median_seconds(partial(graph.run, feeds, OUTPUTS[role]), cell_s)
                setting["items_per_s"][role][str(size)] = size / median
        print(f"  TF32 asked {tf32}: max abs diff {setting['max_abs_diff']}", flush=True)
        settings.append(setting)
    return {"batch": batch, "settings": settings}
