"""Score end to end: the same numbers as in-process onnxruntime, however the request is split or batched."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import VAE
from helpers.servers import RunningServer
from PIL import Image

from client.clients import AsyncVaeClient, VaeClient
from repository.manifest import read_manifest
from repository.prior import StandardNormal
from repository.runtime import Graph
from repository.scoring import Scores, draws, likelihood_of, score_in_process

LATENT, IMAGE = 8, (1, 28, 28)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> VaeClient:
    return VaeClient(server.target)


def binary_images(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *IMAGE)) < 0.3).astype(np.float32)


def in_process(repo: Path, images: np.ndarray, k: int, seed: int) -> Scores:
    version = repo / "tiny" / "1"
    eps = draws(np.random.Generator(np.random.PCG64(seed)), k, LATENT)
    likelihood = likelihood_of(read_manifest(version))
    return score_in_process(
        Graph(version / "encoder.onnx"),
        Graph(version / "decoder.onnx"),
        likelihood,
        StandardNormal(LATENT),
        images,
        eps,
    )


def test_score_equals_the_same_arithmetic_in_process(client: VaeClient, tiny_model_repo: Path) -> None:
    images = binary_images(5)
    # 5 images x 40 samples = 200 decoder items: 25 batches of the server's 8.
    got = client.score(images, samples=40, seed=3)
    want = in_process(tiny_model_repo, images, 40, 3)
    for name in ("log_likelihood", "elbo", "kl"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-4)
    reconstruction = client.reconstruct(images)
    np.testing.assert_array_equal(got.reconstruction_error, reconstruction.error)
    assert got.model == ("tiny", 1)


def test_per_image_scores_do_not_depend_on_how_images_were_grouped(client: VaeClient) -> None:
    images = binary_images(6, seed=1)
    together = client.score(images, samples=13, seed=9)
    alone = [client.score(images[i : i + 1], samples=13, seed=9) for i in range(len(images))]
    for name in ("log_likelihood", "elbo", "kl", "reconstruction_error"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(one, name) for one in alone]), getattr(together, name)
        )
    reversed_order = client.score(images[::-1].copy(), samples=13, seed=9)
    np.testing.assert_array_equal(reversed_order.log_likelihood[::-1], together.log_likelihood)


def test_seeded_scores_repeat_under_concurrent_traffic(server: RunningServer, client: VaeClient) -> None:
    images = binary_images(4, seed=2)
    quiet = client.score(images, samples=30, seed=5)

    async def busy() -> list[np.ndarray]:
        async with AsyncVaeClient(server.target) as other:
            noise = [other.decode(np.ones((7, LATENT), np.float32)) for _ in range(10)]
            noise += [other.score(binary_images(3, seed=s), samples=11) for s in range(5)]
            scored = [other.score(images, samples=30, seed=5) for _ in range(3)]
            results = await asyncio.gather(*noise, *scored)
            return [result.log_likelihood for result in results[-3:]]  # type: ignore[union-attr]

    for log_likelihood in asyncio.run(busy()):
        np.testing.assert_array_equal(log_likelihood, quiet.log_likelihood)


def test_more_decoder_items_than_the_queue_holds_go_through_in_chunks(
    server: RunningServer, client: VaeClient
) -> None:
    # The shared server queues at most 256 items per graph and runs batches of 8.
    images = binary_images(16, seed=3)
    batches = server.metric("vae_batch_size_items_count", graph="decoder")
    scored = client.score(images, samples=64, seed=1)  # 1,024 decoder items
    assert scored.log_likelihood.shape == (16,)
    assert server.metric("vae_batch_size_items_count", graph="decoder") - batches >= 1024 / 8
    assert server.metric("vae_queue_depth_items", graph="decoder") == 0


def test_every_scored_image_lands_in_the_histogram(server: RunningServer, client: VaeClient) -> None:
    # With negative buckets the text format carries no _count or _sum: the +Inf bucket is the count.
    def bucket(le: str) -> float:
        return server.metric("vae_score_log_likelihood_nats_bucket", model="tiny", version="1", le=le)

    before = {le: bucket(le) for le in ("+Inf", "-500.0", "0.0")}
    scored = client.score(binary_images(7, seed=4), samples=2, seed=0)
    assert bucket("+Inf") - before["+Inf"] == 7
    for le in ("-500.0", "0.0"):
        assert bucket(le) - before[le] == (scored.log_likelihood <= float(le)).sum()


@pytest.mark.parametrize("samples", [0, 1025])
def test_samples_out_of_range_are_refused(client: VaeClient, samples: int) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.score(binary_images(1), samples=samples)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == f"samples must be in 1..1024, got {samples}"


def test_a_deadline_drops_the_queued_chunks(
    tiny_model_repo: Path, start_server: Callable[..., RunningServer]
) -> None:
    # Batches of one item: 64 x 1024 decoder items would take minutes, the deadline passes first.
    server = start_server(tiny_model_repo, max_batch_items=1, max_queue_items=64)
    images = binary_images(64, seed=5)
    with VaeClient(server.target, timeout=0.5) as client, pytest.raises(grpc.RpcError) as caught:
        client.score(images, samples=1024)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    started = time.monotonic()
    while server.metric("vae_queue_depth_items", graph="decoder") and time.monotonic() - started < 10:
        time.sleep(0.05)
    assert server.metric("vae_queue_depth_items", graph="decoder") == 0
    with VaeClient(server.target) as client:
        assert client.score(images[:2], samples=2).log_likelihood.shape == (2,)


def test_a_cancelled_score_stops_queueing_chunks(
    tiny_model_repo: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server(tiny_model_repo, max_batch_items=1, max_queue_items=64)
    batches_before = server.metric("vae_batch_size_items_count", graph="decoder")

    async def cancel_one() -> None:
        async with AsyncVaeClient(server.target, timeout=None) as client:
            task = asyncio.ensure_future(client.score(binary_images(64, seed=6), samples=1024))
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(cancel_one())
    time.sleep(0.5)  # the server sees the cancellation, then its chunks stop
    ran = server.metric("vae_batch_size_items_count", graph="decoder")
    time.sleep(0.5)
    assert server.metric("vae_batch_size_items_count", graph="decoder") == ran
    assert ran - batches_before < 64 * 1024
    assert server.metric("vae_queue_depth_items", graph="decoder") == 0


def test_client_score_prints_a_table_or_json(
    server: RunningServer, client: VaeClient, tmp_path: Path
) -> None:
    images = (binary_images(3, seed=7) * 255).astype(np.uint8)
    Image.fromarray(images[0, 0]).save(tmp_path / "one.png")
    np.save(tmp_path / "two.npy", images[1:])
    files = [tmp_path / "one.png", tmp_path / "two.npy"]
    command = [
        *VAE,
        "client",
        "score",
        "--target",
        server.target,
        *map(str, files),
    ]
    table = subprocess.run([*command, "--k", "5", "--seed", "2"], capture_output=True, text=True, check=True)
    printed = subprocess.run(
        [*command, "--k", "5", "--seed", "2", "--json"], capture_output=True, text=True, check=True
    )
    report = json.loads(printed.stdout)
    expected = client.score(images, samples=5, seed=2)
    assert [row["file"] for row in report["images"]] == [str(files[0]), f"{files[1]}[0]", f"{files[1]}[1]"]
    assert [row["log_likelihood"] for row in report["images"]] == expected.log_likelihood.tolist()
    assert (report["model"], report["k"]) == (["tiny", 1], 5)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["file", "log-likelihood", "ELBO", "error"]
    assert lines[1].split()[:2] == [str(files[0]), f"{expected.log_likelihood[0]:.2f}"]
