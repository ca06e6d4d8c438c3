"""The device executor's runs on a real graph: joined batches answer each worker with its own rows; a
version that fails to open, to be assembled or to warm up gives back the graphs it held."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest

from repository.errors import RepositoryError
from repository.placement import ON_CPU
from repository.prior import FlowPrior
from repository.runtime import Graph
from service.config import ServiceConfig
from service.graph_sources import LocalGraphs, ServedGraph, release_all
from service.joined_runs import ExecutorMetrics, Job, Runner, WorkerChannel, run_jobs, take_joinable
from service.loading import load_model, open_graphs
from service.metrics import SERVED_GRAPHS, Metrics
from service.shared_arrays import Reader, Segment


@pytest.fixture
def decoder(tiny_model_repo: Path) -> Graph:
    return Graph(tiny_model_repo / "tiny" / "1" / "decoder.onnx")


class _Worker:
    """A worker thread's end: the executor answers on `channel`, the worker reads them here."""

    def __init__(self, directory: Path, number: int) -> None:
        worker_end, executor_end = Pipe()
        self.connection: Connection = worker_end
        self.channel = WorkerChannel(executor_end, Segment(directory, f"out-{number}"))
        self.reader = Reader(directory)

    def answer(self) -> dict[str, np.ndarray]:
        reply = self.connection.recv()
        assert reply[0] == "ran", reply
        return {name: value.copy() for name, value in self.reader.read(reply[1], reply[2]).items()}


def _latents(decoder: Graph, n: int, seed: int) -> np.ndarray:
    dim = decoder.inputs[0].shape[1]
    assert isinstance(dim, int)
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_take_joinable_keeps_order_and_joins_only_equal_keys_within_the_limit(
    decoder: Graph, tmp_path: Path
) -> None:
    worker = _Worker(tmp_path, 1)
    name = decoder.inputs[0].name

    def job(n: int, outputs: tuple[str, ...] = ("probs",)) -> Job:
        return Job(worker.channel, {name: _latents(decoder, n, n)}, outputs, n)

    a, b, other, c, d = job(3), job(5), job(2, ("logits",)), job(8), job(1)
    waiting = deque([a, b, other, c, d])
    assert take_joinable(waiting, 16) == [a, b, c]  # d would make 17
    assert list(waiting) == [other, d]
    assert take_joinable(waiting, 16) == [other]
    assert take_joinable(waiting, 16) == [d]


def test_a_joined_run_answers_every_worker_with_its_own_rows(decoder: Graph, tmp_path: Path) -> None:
    name = decoder.inputs[0].name
    workers = [_Worker(tmp_path, number) for number in range(3)]
    inputs = [_latents(decoder, n, seed) for seed, n in enumerate((1, 7, 4))]
    jobs = [Job(w.channel, {name: x}, ("probs",), len(x)) for w, x in zip(workers, inputs, strict=True)]
    metrics = ExecutorMetrics()
    run_jobs(decoder, take_joinable(deque(jobs), 256), metrics)
    for worker, latents in zip(workers, inputs, strict=True):
        alone = decoder.run({name: latents}, ("probs",))["probs"]
        np.testing.assert_allclose(worker.answer()["probs"], alone, atol=1e-6)
    assert metrics.registry.get_sample_value("vae_executor_runs_total") == 1
    assert metrics.registry.get_sample_value("vae_executor_run_batches_sum") == 3
    assert metrics.registry.get_sample_value("vae_executor_items_total") == 12


def test_a_failed_run_answers_every_joined_worker_with_the_error(decoder: Graph, tmp_path: Path) -> None:
    workers = [_Worker(tmp_path, number) for number in range(2)]
    wrong = np.zeros((2, 3), np.float32)  # no such input name
    jobs = [Job(w.channel, {"nope": wrong}, ("probs",), 2) for w in workers]
    run_jobs(decoder, jobs, ExecutorMetrics())
    for worker in workers:
        kind, message = worker.connection.recv()
        assert kind == "error" and "nope" in message


def test_a_channel_whose_worker_is_gone_drops_its_answer(decoder: Graph, tmp_path: Path) -> None:
    worker = _Worker(tmp_path, 1)
    worker.connection.close()
    name = decoder.inputs[0].name
    run_jobs(
        decoder, [Job(worker.channel, {name: _latents(decoder, 2, 0)}, ("probs",), 2)], ExecutorMetrics()
    )
    worker.channel.close()  # after the failed send: nothing raised, its segment removed
    assert not list(tmp_path.iterdir())


def test_concurrent_workers_through_the_runner_thread_get_their_own_answers(
    decoder: Graph, tmp_path: Path
) -> None:
    name = decoder.inputs[0].name
    metrics = ExecutorMetrics()
    runner = Runner(decoder, 64, metrics)
    failures: list[str] = []

    def worker(number: int) -> None:
        end = _Worker(tmp_path, number)
        for step in range(20):
            latents = _latents(decoder, 1 + (number + step) % 5, 100 * number + step)
            runner.submit(Job(end.channel, {name: latents}, ("probs",), len(latents)))
            got = end.answer()["probs"]
            alone = decoder.run({name: latents}, ("probs",))["probs"]
            if not np.allclose(got, alone, atol=1e-6):
                failures.append(f"worker {number} step {step}")

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    runner.stop()
    assert not failures
    assert metrics.registry.get_sample_value("vae_executor_run_batches_sum") == 6 * 20


def test_outputs_without_room_fail_that_batch_and_the_runner_goes_on(decoder: Graph, tmp_path: Path) -> None:
    name = decoder.inputs[0].name
    worker = _Worker(tmp_path, 1)
    # A segment that cannot be written (as a full /dev/shm cannot): its file's directory is gone.
    stuck_end, stuck_executor_end = Pipe()
    stuck = WorkerChannel(stuck_executor_end, Segment(tmp_path / "gone", "out-2"))
    runner = Runner(decoder, 64, ExecutorMetrics())
    runner.submit(Job(stuck, {name: _latents(decoder, 2, 0)}, ("probs",), 2))
    kind, message = stuck_end.recv()
    assert kind == "error" and "no room for a batch in shared memory" in message
    latents = _latents(decoder, 3, 1)
    runner.submit(Job(worker.channel, {name: latents}, ("probs",), 3))
    np.testing.assert_allclose(
        worker.answer()["probs"], decoder.run({name: latents}, ("probs",))["probs"], atol=1e-6
    )
    runner.stop()


class _LostGraph:
    """An opened graph whose runs fail, as on a device lost after the version opened."""

    def __init__(self, graph: Graph) -> None:
        self.path = graph.path
        self.provider = graph.provider
        self.describe = graph.describe

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        raise RuntimeError("CUDA failure 999: device lost")


class _HeldGraphs:
    """Real local sessions, counting holds; opening `fails` fails (as a full device would), running
    `lost` fails."""

    def __init__(self, fails: str = "decoder.onnx", lost: str = "") -> None:
        self.local = LocalGraphs(ServiceConfig(), ON_CPU)
        self.held: list[str] = []
        self.fails = fails
        self.lost = lost

    def open(self, path: Path, sha256: str) -> ServedGraph:
        if path.name == self.fails:
            raise RepositoryError(f"{path}: no room on the device")
        self.held.append(path.name)
        graph = self.local.open(path, sha256)
        return _LostGraph(graph) if path.name == self.lost else graph

    def release(self, graph: ServedGraph) -> None:
        assert isinstance(graph, Graph | _LostGraph)
        self.held.remove(graph.path.name)


def test_a_version_that_fails_to_open_gives_back_what_it_opened(tiny_model_repo: Path) -> None:
    source = _HeldGraphs()
    with pytest.raises(RepositoryError, match="no room on the device"):
        open_graphs(tiny_model_repo / "tiny" / "1", ServiceConfig(), source)
    assert source.held == []  # the encoder, opened first, was given back


def test_a_prior_flows_graphs_are_opened_and_given_back_with_its_version(tiny_flow_repo: Path) -> None:
    version = tiny_flow_repo / "tiny-flow" / "1"
    source = _HeldGraphs(fails="prior_flow_sampler.onnx")
    with pytest.raises(RepositoryError, match="no room on the device"):
        open_graphs(version, ServiceConfig(), source)
    assert source.held == []  # the encoder, decoder and the flow's density, opened before it
    source.fails = ""
    opened = open_graphs(version, ServiceConfig(), source)
    assert sorted(source.held) == sorted(
        ["encoder.onnx", "decoder.onnx", "prior_flow_density.onnx", "prior_flow_sampler.onnx"]
    )
    assert isinstance(opened.prior, FlowPrior)
    release_all(source, opened.graphs)
    assert source.held == []


def test_a_version_that_cannot_be_assembled_or_warmed_up_gives_back_what_it_opened(
    tiny_model_repo: Path,
) -> None:
    version = tiny_model_repo / "tiny" / "1"
    config = ServiceConfig(max_batch_items=16)  # as the server resolves it (service/sizing.py)
    metrics = Metrics()
    observers = {graph: metrics.graph(graph) for graph in SERVED_GRAPHS}
    source = _HeldGraphs(fails="", lost="decoder.onnx")
    with pytest.raises(RuntimeError, match="device lost"):
        asyncio.run(load_model(version, config, source, observers))
    assert source.held == []  # the encoder's batches ran; the decoder's first one failed
    source.lost = ""
    without_decoders = {graph: observer for graph, observer in observers.items() if graph != "decoder"}
    with pytest.raises(KeyError, match="decoder"):
        asyncio.run(load_model(version, config, source, without_decoders))
    assert source.held == []  # failed before any batcher held them
    model = asyncio.run(load_model(version, config, source, observers))
    assert sorted(source.held) == ["decoder.onnx", "encoder.onnx"]
    asyncio.run(model.close())
    assert source.held == []
