"""`vae bench` against a real server on port 0 serving the tiny model: report structure, throughput."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import ServiceConfig
from service.server import create_server
from vae_cli import main


@pytest.fixture(scope="module")
def server(tiny_model_repo: Path) -> Iterator[tuple[str, str]]:
    """(gRPC target, metrics URL) of a server whose event loop runs in a thread, so that the
    load generator's client processes can reach it while the test waits for them."""
    config = ServiceConfig(repo=tiny_model_repo, model="tiny", host="127.0.0.1", port=0, metrics_port=0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[object, int]:
        vae_server, port = create_server(config)
        await vae_server.start()
        await vae_server.load_models()
        return vae_server, port

    vae_server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=120)
    yield f"127.0.0.1:{port}", f"http://127.0.0.1:{vae_server.metrics_port}/metrics"  # type: ignore[attr-defined]
    asyncio.run_coroutine_threadsafe(vae_server.stop(0), loop).result(timeout=60)  # type: ignore[attr-defined]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


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
