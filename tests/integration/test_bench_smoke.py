"""`vae bench` against a real server serving the tiny model; the suite's baselines, and every one of its
systems, Triton included, in both modes."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers.servers import RunningServer, config_for

from benchmarks import (
    analysis,
    conditions,
    inprocess,
    load,
    markdown,
    processes,
    rounds,
    suite,
    systems,
    workloads,
)
from benchmarks.scenarios import BASELINES, MODES, SYSTEMS
from client.clients import VaeClient
from repository.runtime import Graph
from service.config import ServiceConfig
from vae_cli import main


@pytest.fixture(scope="module")
def server(tiny_model_repo: Path) -> Iterator[tuple[str, str]]:
    """(gRPC target, metrics URL) of a server on its own event-loop thread, so that the load
    generator's client processes can reach it while the test waits for them."""
    running = RunningServer(config_for(tiny_model_repo))
    yield running.target, running.metrics_url
    running.stop()


def bench(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["bench", "--duration", "1", "--warmup", "0.2", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("rpc", "items", "graphs"),
    [
        ("decode", 1, {"decoder"}),
        ("encode", 2, {"encoder"}),
        ("sample", 8, {"decoder"}),
        ("reconstruct", 4, {"encoder", "decoder"}),
    ],
)
def test_json_report(
    server: tuple[str, str], capsys: pytest.CaptureFixture[str], rpc: str, items: int, graphs: set[str]
) -> None:
    target, metrics_url = server
    code, out, _ = bench(
        capsys,
        "--target",
        target,
        "--rpc",
        rpc,
        "--items",
        str(items),
        "--concurrency",
        "4",
        "--processes",
        "2",
        "--metrics-url",
        metrics_url,
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert (report["rpc"], report["items_per_request"], report["concurrency"], report["processes"]) == (
        rpc,
        items,
        4,
        2,
    )
    assert report["errors"] == {}
    assert report["requests"] > 0
    assert report["requests_per_s"] == pytest.approx(report["requests"] / report["duration_s"])
    assert report["items_per_s"] == pytest.approx(report["requests_per_s"] * items)
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # The server's own count of what it ran in the window: every graph the RPC uses, no other.
    assert set(report["batch_sizes"]) == graphs
    for sizes in report["batch_sizes"].values():
        assert sizes["batches"] == sum(sizes["buckets"].values()) > 0
        assert sizes["items"] >= sizes["batches"]
        assert sizes["mean"] == pytest.approx(sizes["items"] / sizes["batches"], abs=0.01)


def test_table_report(server: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    target, metrics_url = server
    code, out, _ = bench(
        capsys, "--target", target, "--rpc", "decode", "--concurrency", "2", "--metrics-url", metrics_url
    )
    assert code == 0
    rows = dict(
        line.split(None, 1) for line in out.splitlines() if not line.startswith(("latency", "decoder"))
    )
    assert rows["target"].strip() == target
    ok, rate = rows["requests"].split(" ok, ")
    assert int(ok) > 0 and float(rate.removesuffix("/s").replace(",", "")) > 0
    assert rows["errors"].strip() == "none"
    assert any(line.startswith("decoder batches") for line in out.splitlines())


def test_unknown_model_is_a_user_error(server: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = bench(capsys, "--target", server[0], "--model", "nope")
    assert code == 2
    assert "NOT_FOUND" in err


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning to a subset needs two CPUs")
def test_pinned_load_runs_its_client_processes_on_the_cpus_given(server: tuple[str, str]) -> None:
    _, client_cpus = processes.split_cpus()
    checked = workloads.prepare(server[0], "decode", 1)
    seen: list[frozenset[int]] = []

    def on_window(edge: str) -> None:
        seen.extend(frozenset(os.sched_getaffinity(child.pid)) for child in multiprocessing.active_children())

    result = load.run(
        server[0], checked.workload, concurrency=2, duration=0.3, warmup=0.1, processes=2,
        on_window=on_window, cpus=client_cpus,
    )  # fmt: skip
    assert result.requests > 0
    assert len(seen) == 4 and set(seen) == {client_cpus}  # both processes, at both edges of the window


# --- the suite's minimal baselines, and its schedule in both modes --------------------------------


@pytest.fixture(scope="module")
def graphs(tiny_model_repo: Path) -> dict[str, Graph]:
    return inprocess.load_graphs(tiny_model_repo / "tiny" / "1")


@pytest.mark.parametrize("name", BASELINES)
def test_a_minimal_baseline_answers_like_onnxruntime_in_process(
    tiny_model_repo: Path, tmp_path: Path, graphs: dict[str, Graph], name: str
) -> None:
    version_dir = tiny_model_repo / "tiny" / "1"
    server = systems.start_baseline(
        name, version_dir, tmp_path / "log", ServiceConfig.event_loop, batching=BASELINES[name]
    )
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((16, 8), dtype=np.float32)
    images = rng.random((3, 1, 28, 28), dtype=np.float32)
    try:
        with VaeClient(server.target, timeout=30) as vae:
            # One call of several items, then 16 concurrent calls of one: the micro-batcher merges them.
            decoded = vae.decode(latents[:3]).images
            with ThreadPoolExecutor(16) as pool:
                rows = list(pool.map(lambda z: vae.decode(z[None]).images, latents))
            encoded = vae.encode(images)
    finally:
        server.stop()
    expected = graphs["decoder"].run({"z": latents[:3]}, ["probs"])["probs"]
    np.testing.assert_array_equal(decoded, expected)
    one_by_one = graphs["decoder"].run({"z": latents}, ["probs"])["probs"]
    np.testing.assert_allclose(np.concatenate(rows), one_by_one, atol=1e-6)  # other batch sizes
    expected_encoding = graphs["encoder"].run({"x": images}, ["mu", "logvar"])
    np.testing.assert_array_equal(encoded.mu, expected_encoding["mu"])
    np.testing.assert_array_equal(encoded.logvar, expected_encoding["logvar"])


NO_TRITON = f"{systems.TRITON_PYTHON} is missing: `make test` (and `make bench`) create it"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the pinned mode needs two CPUs")
# Under CI (CI set) a missing Triton fails the test: it promises every system. Elsewhere it skips.
@pytest.mark.skipif(not systems.TRITON_PYTHON.exists() and not os.environ.get("CI"), reason=NO_TRITON)
def test_the_suite_runs_every_system_pinned_and_unpinned(tiny_model_repo: Path, tmp_path: Path) -> None:
    assert systems.TRITON_PYTHON.exists(), NO_TRITON
    systems_ = list(SYSTEMS)
    args = suite.build_parser().parse_args(
        [
            *("--rounds", "1", "--duration", "0.3", "--warmup", "0.1", "--cold-starts", "0"),
            *("--inprocess-seconds", "0.01", "--scenarios", "decode-c16", "--systems", *systems_),
        ]
    )
    results = rounds.run(args, tiny_model_repo, tiny_model_repo / "tiny" / "1", tmp_path / "logs")

    runs = {(r["mode"], r["system"]): r for r in results["load"]}
    assert sorted(runs) == sorted((mode, system) for mode in MODES for system in systems_)
    for record in runs.values():
        assert "failed" not in record, record
        assert record["report"]["requests"] > 0 and record["report"]["errors"] == {}
        assert record["server_cpu_ms_per_call"] > 0
    summary = analysis.summarize(results)
    assert set(summary["load_pinned"]["decode-c16"]) == set(systems_)
    host = {"started": conditions.now(), "finished": conditions.now(), "command": "pytest"}
    host |= {
        "machine": conditions.machine(),
        **conditions.host_load("before"),
        **conditions.host_load("after"),
    }
    page = markdown.render({"conditions": host, "settings": vars(args), "summary": summary})
    assert "Pinned: each server on one CPU" in page and "| minimal micro-batcher |" in page
