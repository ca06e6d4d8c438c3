"""`vae serve --workers 2 --device-executor`: the workers' batches run in one process, which holds one
session per graph for all of them, joins batches that wait together, gives back the graphs of a
worker that died or a version that left, and whose own death ends the service.

What must hold for any workers (spread, sums, reload, drain, replacement) is in test_workers.py,
which runs each of those tests with the executor too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import wait_until
from helpers.servers import ServerProcess, serving

from repository.manifest import read_manifest
from repository.prior import FlowPrior, load_prior
from repository.runtime import Graph
from repository.scoring import draws, likelihood_of, score_in_process
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc
from wire.tensors import tensor, to_numpy

pytestmark = pytest.mark.slow

_EXECUTOR = re.compile(r"device executor \(pid (\d+)\): metrics on")
_WORKER_PID = re.compile(r"worker (\d+) \(pid (\d+)\): metrics on")
_RUN_DIRECTORY = re.compile(r"device executor on \S+; shared memory in ([^;\s]+)")
FLAGS = ("--workers", "2", "--device-executor")


def _loaded_by_both(server: ServerProcess, version: str = "1") -> Callable[[], bool]:
    return lambda: (
        server.metric("vae_model_info", name="tiny", version=version, provider="CPUExecutionProvider") == 2
    )


def _executor_pid(server: ServerProcess) -> int:
    return int(_EXECUTOR.findall(server.log_text())[0])


def test_answers_are_the_graphs_own_and_concurrent_batches_share_runs(tiny_model_repo: Path) -> None:
    decoder = Graph(tiny_model_repo / "tiny" / "1" / "decoder.onnx")
    dim = decoder.inputs[0].shape[1]
    assert isinstance(dim, int)
    with serving(tiny_model_repo, *FLAGS) as server:
        wait_until(_loaded_by_both(server), 120, "both workers loaded")
        # Opened once for both workers: the encoder and the decoder.
        assert server.metric("vae_executor_open_graphs") == 2
        mismatches: list[int] = []
        stop = threading.Event()

        def caller(seed: int) -> None:
            # A connection of its own per caller: the kernel spreads them over both workers.
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(server.target, options=options) as channel:
                stub = vae_pb2_grpc.VaeServiceStub(channel)
                local = np.random.default_rng(seed)
                while not stop.is_set():
                    latents = local.standard_normal((1 + seed % 3, dim)).astype(np.float32)
                    reply = stub.Decode(pb.DecodeRequest(latents=tensor(latents)), timeout=30)
                    expected = decoder.run({decoder.inputs[0].name: latents}, ("probs",))["probs"]
                    if not np.allclose(to_numpy(reply.images, "images"), expected, atol=1e-6):
                        mismatches.append(seed)

        callers = [threading.Thread(target=caller, args=(seed,)) for seed in range(16)]
        for thread in callers:
            thread.start()
        # Both workers' batches arrive while a run is under way: some runs join several of them.
        wait_until(
            lambda: (
                server.metric("vae_executor_run_batches_count")
                < server.metric("vae_executor_run_batches_sum")
            ),
            60,
            "a run that joined batches",
        )
        stop.set()
        for thread in callers:
            thread.join(timeout=60)
        assert not mismatches
        calls = server.metric("vae_requests_total", method="Decode", code="OK")
        assert calls > 0
        # Every item the workers decoded ran in the executor (beside their warm-up batches).
        assert server.metric("vae_executor_items_total") >= server.metric("vae_items_total", method="Decode")


def test_a_dead_workers_graphs_and_segments_are_given_back(tiny_model_repo: Path) -> None:
    with serving(tiny_model_repo, *FLAGS) as server:
        wait_until(_loaded_by_both(server), 120, "both workers loaded")
        directory = Path(_RUN_DIRECTORY.findall(server.log_text())[0])
        with grpc.insecure_channel(server.target) as channel:
            vae_pb2_grpc.VaeServiceStub(channel).Sample(pb.SampleRequest(n=4), timeout=30)
        pids = {int(index): int(pid) for index, pid in _WORKER_PID.findall(server.log_text())}
        killed = pids[0]
        wait_until(lambda: any(directory.glob(f"in-{killed}-*")), 30, "worker 0's input segments")
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: int(dict(_WORKER_PID.findall(server.log_text()))["0"]) != killed, 120, "worker 0 replaced"
        )
        wait_until(_loaded_by_both(server), 120, "the replacement loaded")
        assert not list(directory.glob(f"in-{killed}-*"))
        # The replacement shares the sessions still open for the other worker: nothing leaked.
        assert server.metric("vae_executor_open_graphs") == 2
        with grpc.insecure_channel(server.target) as channel:
            vae_pb2_grpc.VaeServiceStub(channel).Sample(pb.SampleRequest(n=4), timeout=30)
    assert not directory.exists()


def test_a_version_whose_files_change_is_closed_in_the_executor(
    tiny_model_repo: Path, tmp_path: Path, tiny_model_exporter: Callable[..., Path]
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_model_repo, repo)
    tiny_model_exporter(repo, 2, seed=1)
    with serving(repo, *FLAGS) as server:
        wait_until(_loaded_by_both(server, "2"), 120, "both workers loaded version 2")
        wait_until(_loaded_by_both(server, "1"), 120, "both workers loaded version 1")
        assert server.metric("vae_executor_open_graphs") == 4
        # A version number names one model forever: changed files are refused, and the executor
        # closes that version's sessions once neither worker holds them.
        decoder = repo / "tiny" / "1" / "decoder.onnx"
        decoder.write_bytes(decoder.read_bytes() + b"\0")
        server.send(signal.SIGHUP)
        wait_until(lambda: server.metric("vae_executor_open_graphs") == 2, 120, "version 1's graphs closed")
        assert server.metric("vae_model_files_changed_total", name="tiny", version="1") == 2


def test_the_executors_death_ends_the_service(tiny_model_repo: Path) -> None:
    with serving(tiny_model_repo, *FLAGS) as server:
        wait_until(_loaded_by_both(server), 120, "both workers loaded")
        os.kill(_executor_pid(server), signal.SIGKILL)
        assert server.wait(timeout=60) == 1
        assert "the device executor exited with -9; stopping every worker" in server.log_text()


def test_a_prior_flows_graphs_run_in_the_executor_too(
    tiny_model_repo: Path, tiny_flow_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_model_repo, repo)
    shutil.copytree(tiny_flow_repo / "tiny-flow", repo / "tiny-flow")
    version = repo / "tiny-flow" / "1"
    prior = load_prior(version, read_manifest(version))
    assert isinstance(prior, FlowPrior)
    with serving(repo, *FLAGS) as server:
        wait_until(_loaded_by_both(server), 120, "both workers loaded")
        wait_until(
            lambda: server.metric("vae_executor_open_graphs") == 6, 60, "tiny's 2 graphs, tiny-flow's 4"
        )
        with grpc.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            flow = pb.ModelRef(name="tiny-flow")
            reply = stub.Sample(pb.SampleRequest(model=flow, n=5, seed=3), timeout=30)
            expected = prior.sample(np.random.Generator(np.random.PCG64(3)), 5, 1.0)
            np.testing.assert_allclose(to_numpy(reply.latents, "latents"), expected, rtol=0, atol=1e-6)
            images = (np.random.default_rng(0).random((2, 1, 28, 28)) < 0.3).astype(np.float32)
            request = pb.ScoreRequest(model=flow, images=tensor(images), samples=8, seed=1)
            scored = to_numpy(stub.Score(request, timeout=30).log_likelihood, "log_likelihood")
        want = score_in_process(
            Graph(version / "encoder.onnx"),
            Graph(version / "decoder.onnx"),
            likelihood_of(read_manifest(version)),
            prior,
            images,
            draws(np.random.Generator(np.random.PCG64(1)), 8, 8),
        )
        np.testing.assert_allclose(scored, want.log_likelihood, rtol=0, atol=1e-4)
