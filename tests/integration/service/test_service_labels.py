"""A class-conditional model served beside an unconditional one: labels checked at the edge, fed to
both graphs, and kept with their own items when requests share batches."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import vae
from helpers.servers import RunningServer

from client.clients import AsyncVaeClient, VaeClient
from repository.manifest import read_manifest
from repository.prior import StandardNormal
from repository.runtime import Graph
from repository.scoring import draws, likelihood_of, score_in_process
from repository.tensor_names import IMAGES, LABELS, LATENTS, MU, PROBS
from service.latents import interpolate
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

CVAE, PLAIN = "tiny-cvae", "tiny"
CLASSES = ("a", "b", "c")
LATENT, IMAGE = 8, (1, 28, 28)
DESCRIBED = "model 'tiny-cvae' is conditional on 3 classes (0..2: a, b, c)"
PER_ITEM = f"{DESCRIBED}: pass labels, one per item or one for all"


@pytest.fixture(scope="module")
def server(
    tiny_model_repo: Path,
    tiny_cvae_repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_server: Callable[..., RunningServer],
) -> RunningServer:
    """tiny/1 (the default) and tiny-cvae/1 in one repository; batches of 8 items at most.

    A fixed 20 ms window before each batch: concurrent requests surely share batches.
    """
    repo = tmp_path_factory.mktemp("labels") / "models"
    shutil.copytree(tiny_model_repo, repo)
    shutil.copytree(tiny_cvae_repo / CVAE, repo / CVAE)
    return start_server(repo, max_delay_ms=20)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[VaeClient]:
    with VaeClient(server.target) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield vae_pb2_grpc.VaeServiceStub(channel)


@pytest.fixture(scope="module")
def graphs(tiny_cvae_repo: Path) -> dict[str, Graph]:
    version = tiny_cvae_repo / CVAE / "1"
    return {role: Graph(version / f"{role}.onnx") for role in ("encoder", "decoder")}


def encode_one(graphs: dict[str, Graph], image: np.ndarray, label: int) -> np.ndarray:
    """mu of one image under one label: a batch of one, run in this process."""
    return graphs["encoder"].run({IMAGES: image[None], LABELS: np.array([label])}, (MU,))[MU][0]


def decode_one(graphs: dict[str, Graph], z: np.ndarray, label: int) -> np.ndarray:
    return graphs["decoder"].run({LATENTS: z[None], LABELS: np.array([label])}, (PROBS,))[PROBS][0]


def decode(graphs: dict[str, Graph], z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return graphs["decoder"].run({LATENTS: z, LABELS: labels.astype(np.int64)}, (PROBS,))[PROBS]


def images(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *IMAGE)) < 0.3).astype(np.float32)


def test_model_info_and_list_models_report_the_classes(client: VaeClient) -> None:
    assert client.model_info(CVAE).classes == CLASSES
    assert client.model_info().classes == ()  # the default, unconditional tiny
    assert {info.name: info.classes for info in client.list_models()} == {PLAIN: (), CVAE: CLASSES}


# --- wrong labels --------------------------------------------------------------------------------

CVAE_REF, PLAIN_REF = pb.ModelRef(name=CVAE), pb.ModelRef(name=PLAIN)


def _z(n: int) -> pb.Tensor:
    return pb.Tensor(shape=[n, LATENT], dtype=pb.DTYPE_FLOAT32, data=bytes(4 * LATENT * n))


def _x(n: int) -> pb.Tensor:
    return pb.Tensor(shape=[n, *IMAGE], dtype=pb.DTYPE_UINT8, data=bytes(n * 28 * 28))


UNCONDITIONAL = "labels: model 'tiny' is unconditional (it has no classes): send no labels"
WRONG: list[tuple[str, str, Any, str]] = [
    # (id, rpc, request, exact message)
    ("sample-none", "Sample", pb.SampleRequest(model=CVAE_REF, n=2), f"labels: {PER_ITEM}"),
    ("stream-none", "SampleStream", pb.SampleRequest(model=CVAE_REF, n=20), f"labels: {PER_ITEM}"),
    ("decode-none", "Decode", pb.DecodeRequest(model=CVAE_REF, latents=_z(2)), f"labels: {PER_ITEM}"),
    ("encode-none", "Encode", pb.EncodeRequest(model=CVAE_REF, images=_x(2)), f"labels: {PER_ITEM}"),
    (
        "reconstruct-none",
        "Reconstruct",
        pb.ReconstructRequest(model=CVAE_REF, images=_x(1)),
        f"labels: {PER_ITEM}",
    ),
    (
        "score-none",
        "Score",
        pb.ScoreRequest(model=CVAE_REF, images=_x(1), samples=2),
        f"labels: {PER_ITEM}",
    ),
    (
        "interpolate-none",
        "Interpolate",
        pb.InterpolateRequest(model=CVAE_REF, latents=_z(2), steps=3),
        f"labels: {DESCRIBED}: pass labels, exactly one, the class of the whole path",
    ),
    (
        "interpolate-two",
        "Interpolate",
        pb.InterpolateRequest(model=CVAE_REF, latents=_z(2), steps=2, labels=[0, 1]),
        f"labels: got 2 labels; {DESCRIBED}: pass labels, exactly one, the class of the whole path",
    ),
    (
        "decode-out-of-range",
        "Decode",
        pb.DecodeRequest(model=CVAE_REF, latents=_z(3), labels=[2, 3, 0]),
        f"labels: label 3 (position 1) is out of range; {DESCRIBED}",
    ),
    (
        "stream-out-of-range",
        "SampleStream",
        pb.SampleRequest(model=CVAE_REF, n=20, labels=[7]),
        f"labels: label 7 (position 0) is out of range; {DESCRIBED}",
    ),
    (
        "encode-count",
        "Encode",
        pb.EncodeRequest(model=CVAE_REF, images=_x(3), labels=[0, 1]),
        f"labels: got 2 labels for 3 items; {PER_ITEM}",
    ),
    (
        "score-count",
        "Score",
        pb.ScoreRequest(model=CVAE_REF, images=_x(2), samples=2, labels=[0, 1, 2]),
        f"labels: got 3 labels for 2 items; {PER_ITEM}",
    ),
    ("plain-sample", "Sample", pb.SampleRequest(model=PLAIN_REF, n=2, labels=[0]), UNCONDITIONAL),
    ("plain-stream", "SampleStream", pb.SampleRequest(n=2, labels=[1, 1]), UNCONDITIONAL),
    ("plain-decode", "Decode", pb.DecodeRequest(latents=_z(1), labels=[0]), UNCONDITIONAL),
    ("plain-encode", "Encode", pb.EncodeRequest(images=_x(1), labels=[0]), UNCONDITIONAL),
    ("plain-reconstruct", "Reconstruct", pb.ReconstructRequest(images=_x(1), labels=[2]), UNCONDITIONAL),
    ("plain-score", "Score", pb.ScoreRequest(images=_x(1), samples=1, labels=[0]), UNCONDITIONAL),
    (
        "plain-interpolate",
        "Interpolate",
        pb.InterpolateRequest(latents=_z(2), steps=2, labels=[0]),
        UNCONDITIONAL,
    ),
]


@pytest.mark.parametrize(("rpc", "request_", "message"), [c[1:] for c in WRONG], ids=[c[0] for c in WRONG])
def test_wrong_labels_are_invalid_and_say_what_the_model_takes(
    stub: vae_pb2_grpc.VaeServiceStub, server: RunningServer, rpc: str, request_: Any, message: str
) -> None:
    batches = server.metric("vae_batch_size_items_count", graph="decoder")
    with pytest.raises(grpc.RpcError) as caught:
        answer = getattr(stub, rpc)(request_, timeout=10)
        if rpc == "SampleStream":
            list(answer)  # a stream fails when read: before its first chunk
    error: Any = caught.value
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert server.metric("vae_batch_size_items_count", graph="decoder") == batches  # nothing ran


# --- labels stay with their items -----------------------------------------------------------------


def test_concurrent_mixed_label_decodes_each_get_their_own_labels_images(
    server: RunningServer, graphs: dict[str, Graph]
) -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, LATENT), dtype=np.float32)  # every request decodes some of these
    reference = {(j, c): decode_one(graphs, z[j], c) for j in range(len(z)) for c in range(len(CLASSES))}
    # The classes change each image far more than the tolerance, so a mix-up could not pass.
    for j in range(len(z)):
        for a, b in ((0, 1), (0, 2), (1, 2)):
            assert np.abs(reference[j, a] - reference[j, b]).max() > 1e-3
    sent: list[tuple[np.ndarray, np.ndarray, int | np.ndarray]] = []  # (picks, labels, as sent)
    for i in range(40):
        picks = rng.integers(0, len(z), int(rng.integers(1, 6)))
        if i % 3:  # one label per item
            labels = rng.integers(0, len(CLASSES), len(picks))
            sent.append((picks, labels, labels))
        else:  # one label for all
            label = int(rng.integers(0, len(CLASSES)))
            sent.append((picks, np.full(len(picks), label), label))
    batches = server.metric("vae_batch_size_items_count", graph="decoder")

    async def decode_all() -> list[np.ndarray]:
        async with AsyncVaeClient(server.target) as client:
            calls = [client.decode(z[picks], labels=given, model=CVAE) for picks, _, given in sent]
            return [result.images for result in await asyncio.gather(*calls)]

    decoded = asyncio.run(decode_all())
    items = sum(len(picks) for picks, _, _ in sent)
    ran = server.metric("vae_batch_size_items_count", graph="decoder") - batches
    assert ran <= items / 2  # requests shared batches: labels had to be joined and sliced back
    for (picks, labels, _), got in zip(sent, decoded, strict=True):
        want = np.stack([reference[j, c] for j, c in zip(picks, labels, strict=True)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_concurrent_mixed_label_encodes_each_get_their_own_labels_posterior(
    server: RunningServer, graphs: dict[str, Graph]
) -> None:
    rng = np.random.default_rng(1)
    x = images(4, seed=1)
    reference = {(j, c): encode_one(graphs, x[j], c) for j in range(len(x)) for c in range(len(CLASSES))}
    for j in range(len(x)):
        assert np.abs(reference[j, 0] - reference[j, 1]).max() > 1e-3
    sent = [
        (picks, rng.integers(0, len(CLASSES), len(picks)))
        for picks in (rng.integers(0, len(x), int(rng.integers(1, 6))) for _ in range(30))
    ]
    batches = server.metric("vae_batch_size_items_count", graph="encoder")

    async def encode_all() -> list[np.ndarray]:
        async with AsyncVaeClient(server.target) as client:
            calls = [client.encode(x[picks], labels=labels, model=CVAE) for picks, labels in sent]
            return [result.mu for result in await asyncio.gather(*calls)]

    encoded = asyncio.run(encode_all())
    assert server.metric("vae_batch_size_items_count", graph="encoder") - batches < len(sent)
    for (picks, labels), got in zip(sent, encoded, strict=True):
        want = np.stack([reference[j, c] for j, c in zip(picks, labels, strict=True)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_sample_and_its_stream_decode_each_latent_under_its_label(
    client: VaeClient, graphs: dict[str, Graph]
) -> None:
    labels = np.arange(20) % 3
    sampled = client.sample(20, seed=4, labels=labels, model=CVAE)
    np.testing.assert_allclose(sampled.images, decode(graphs, sampled.latents, labels), rtol=0, atol=1e-6)
    # Chunks of 8: the labels are sliced with their latents.
    chunks = list(client.sample_stream(20, seed=4, labels=labels, model=CVAE))
    assert len(chunks) == 3
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), sampled.images)
    one = client.sample(3, seed=4, labels=2, model=CVAE)
    np.testing.assert_allclose(one.images, decode(graphs, one.latents, np.full(3, 2)), rtol=0, atol=1e-6)


def test_reconstruct_and_interpolate_run_both_graphs_under_the_label(
    client: VaeClient, graphs: dict[str, Graph]
) -> None:
    x = images(3, seed=2)
    labels = np.array([1, 0, 2])
    mu = np.stack([encode_one(graphs, image, c) for image, c in zip(x, labels, strict=True)])
    reconstructed = client.reconstruct(x, labels=labels, model=CVAE)
    np.testing.assert_allclose(reconstructed.images, decode(graphs, mu, labels), rtol=0, atol=1e-5)

    path = client.interpolate(x[0], x[1], steps=5, label=2, model=CVAE)
    ends = np.stack([encode_one(graphs, x[0], 2), encode_one(graphs, x[1], 2)])
    np.testing.assert_allclose(path.latents, interpolate(ends[0], ends[1], 5, False), rtol=0, atol=1e-5)
    np.testing.assert_allclose(path.images, decode(graphs, path.latents, np.full(5, 2)), rtol=0, atol=1e-6)


def test_score_with_labels_equals_repository_scoring_in_process(
    client: VaeClient, graphs: dict[str, Graph], tiny_cvae_repo: Path
) -> None:
    x = images(4, seed=3)
    labels = np.array([2, 0, 1, 2])
    # 4 images x 10 samples = 40 decoder items: chunks of 8 that cross images, hence labels.
    got = client.score(x, samples=10, seed=5, labels=labels, model=CVAE)
    eps = draws(np.random.Generator(np.random.PCG64(5)), 10, LATENT)
    likelihood = likelihood_of(read_manifest(tiny_cvae_repo / CVAE / "1"))
    want = score_in_process(
        graphs["encoder"], graphs["decoder"], likelihood, StandardNormal(LATENT), x, eps, labels=labels
    )
    for name in ("log_likelihood", "elbo", "kl"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-4)
    # Each image scored alone under its label gets the same bits; under another label, other numbers.
    alone = [
        client.score(x[i : i + 1], samples=10, seed=5, labels=int(labels[i]), model=CVAE) for i in range(4)
    ]
    np.testing.assert_array_equal(np.concatenate([a.log_likelihood for a in alone]), got.log_likelihood)
    other = client.score(x, samples=10, seed=5, labels=(labels + 1) % 3, model=CVAE)
    assert np.abs(other.kl - got.kl).min() > 1e-3


def test_client_cli_samples_a_class_and_shows_the_classes(
    server: RunningServer, client: VaeClient, tmp_path: Path
) -> None:
    target = ["--target", server.target, "--model", CVAE]
    vae("client", "sample", *target, "--label", "1", "--n", "3", "--seed", "6", "--npy", "--out", tmp_path)
    expected = client.sample(3, seed=6, labels=1, model=CVAE)
    np.testing.assert_array_equal(np.load(tmp_path / "sample.npy"), expected.images)
    info = json.loads(vae("client", "info", *target, "--json").stdout)
    assert info["classes"] == list(CLASSES)
    listed = vae("client", "list-models", "--target", server.target).stdout.splitlines()
    assert [line.endswith(", 3 classes") for line in listed] == [False, True]  # tiny, then tiny-cvae
