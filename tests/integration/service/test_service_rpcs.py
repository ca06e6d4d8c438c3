"""Every RPC end to end against a real server, checked against onnxruntime run in-process."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers.servers import RunningServer

from client.clients import AsyncVaeClient, VaeClient
from repository.placement import CPU, CUDA, Placement
from repository.runtime import Graph
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

LATENT, IMAGE = 8, (1, 28, 28)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> VaeClient:
    return VaeClient(server.target)


@pytest.fixture(scope="module")
def graphs(tiny_model_repo: Path) -> dict[str, Graph]:
    version = tiny_model_repo / "tiny" / "1"
    return {role: Graph(version / f"{role}.onnx") for role in ("encoder", "decoder")}


def latents(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, LATENT), dtype=np.float32)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *IMAGE), dtype=np.float32)


def pcg64(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(seed)).standard_normal(shape, dtype=np.float32)


def test_decode_matches_onnxruntime(client: VaeClient, graphs: dict[str, Graph]) -> None:
    z = latents(5)
    result = client.decode(z)
    assert result.model == ("tiny", 1)
    assert result.images.shape == (5, *IMAGE) and result.images.dtype == np.float32
    np.testing.assert_allclose(result.images, graphs["decoder"].run({"z": z})["probs"], atol=1e-6)


def test_decode_to_uint8_quantizes_the_same_pixels(client: VaeClient) -> None:
    z = latents(3, seed=1)
    exact, quantized = client.decode(z).images, client.decode(z, output_dtype="uint8").images
    assert quantized.dtype == np.uint8
    np.testing.assert_array_equal(quantized, np.floor(exact * 255 + 0.5).astype(np.uint8))


def test_encode_matches_onnxruntime_and_seeded_posterior_samples_repeat(
    client: VaeClient, graphs: dict[str, Graph]
) -> None:
    x = images(4)
    expected = graphs["encoder"].run({"x": x})
    first = client.encode(x, samples=3, seed=11)
    np.testing.assert_allclose(first.mu, expected["mu"], atol=1e-6)
    np.testing.assert_allclose(first.logvar, expected["logvar"], atol=1e-6)
    assert first.z is not None and first.z.shape == (4, 3, LATENT)
    eps = pcg64(11, (4, 3, LATENT))
    np.testing.assert_allclose(
        first.z, first.mu[:, None] + eps * np.exp(0.5 * first.logvar)[:, None], rtol=1e-5
    )
    again = client.encode(x, samples=3, seed=11)
    assert again.z is not None
    np.testing.assert_array_equal(again.z, first.z)
    assert client.encode(x).z is None


def test_encode_accepts_uint8_images(client: VaeClient) -> None:
    pixels = (images(2) * 255).astype(np.uint8)
    from_uint8 = client.encode(pixels).mu
    from_float = client.encode(pixels.astype(np.float32) / 255).mu
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-5)


def test_seeded_sample_uses_numpy_pcg64_scaled_by_temperature(
    client: VaeClient, graphs: dict[str, Graph]
) -> None:
    result = client.sample(6, seed=3, temperature=0.7)
    np.testing.assert_allclose(result.latents, pcg64(3, (6, LATENT)) * np.float32(0.7), rtol=1e-6)
    np.testing.assert_allclose(
        result.images, graphs["decoder"].run({"z": result.latents})["probs"], atol=1e-6
    )
    assert not client.sample(2, seed=3, temperature=0.0).latents.any()


def test_unseeded_samples_differ_and_their_latents_come_back(client: VaeClient) -> None:
    first, second = client.sample(4), client.sample(4)
    assert not np.array_equal(first.latents, second.latents)
    np.testing.assert_allclose(client.decode(first.latents).images, first.images, atol=1e-6)


def test_sample_stream_equals_sample_in_batch_sized_chunks(client: VaeClient) -> None:
    chunks = list(client.sample_stream(20, seed=9, output_dtype="uint8"))
    assert [len(chunk.images) for chunk in chunks] == [8, 8, 4]  # max_batch_items is 8
    whole = client.sample(20, seed=9, output_dtype="uint8")
    np.testing.assert_array_equal(np.concatenate([c.latents for c in chunks]), whole.latents)
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), whole.images)


def test_reconstruct_decodes_the_posterior_mean_and_reports_the_error(client: VaeClient) -> None:
    x = images(3, seed=2)
    result = client.reconstruct(x)
    np.testing.assert_allclose(result.images, client.decode(client.encode(x).mu).images, atol=1e-6)
    expected_error = ((result.images - x) ** 2).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(result.error, expected_error, rtol=1e-5)


def test_interpolate_between_latents(client: VaeClient) -> None:
    a, b = latents(2, seed=4)
    for method in ("linear", "spherical"):
        result = client.interpolate(a, b, steps=5, method=method)  # type: ignore[arg-type]
        assert result.latents.shape == (5, LATENT) and result.images.shape == (5, *IMAGE)
        np.testing.assert_allclose(result.latents[[0, -1]], [a, b], atol=1e-5)
        np.testing.assert_allclose(result.images, client.decode(result.latents).images, atol=1e-6)
    linear = client.interpolate(a, b, steps=3).latents[1]
    spherical = client.interpolate(a, b, steps=3, method="spherical").latents[1]
    assert np.linalg.norm(spherical) > np.linalg.norm(linear)


def test_interpolate_between_images_starts_at_their_posterior_means(client: VaeClient) -> None:
    x = images(2, seed=5)
    result = client.interpolate(x[0], x[1], steps=4)
    np.testing.assert_allclose(result.latents[[0, -1]], client.encode(x).mu, atol=1e-5)


def test_list_models_and_model_info(client: VaeClient, tiny_model_repo: Path) -> None:
    manifest = json.loads((tiny_model_repo / "tiny" / "1" / "model.json").read_text())
    (info,) = client.list_models()
    assert info == client.model_info() == client.model_info("tiny", 1)
    assert (info.name, info.version, info.versions, info.is_default) == ("tiny", 1, (1,), True)
    assert (info.latent_dim, info.image_shape, info.likelihood) == (LATENT, IMAGE, "bernoulli")
    assert info.provider == "CPUExecutionProvider"
    assert (info.pairing_id, info.created) == (manifest["pairing_id"], manifest["created"])
    assert (info.max_batch_items, info.max_request_items) == (8, 64)


def test_timing_trailers_are_off_unless_asked_for(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        _, call = stub.ListModels.with_call(pb.ListModelsRequest())
        assert "x-queue-ms" not in dict(call.trailing_metadata())


def test_with_timing_trailers_every_response_carries_queue_and_compute_milliseconds(
    tiny_model_repo: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server(tiny_model_repo, timing_trailers=True)
    with grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        request = pb.DecodeRequest(
            latents=pb.Tensor(shape=[1, LATENT], dtype=pb.DTYPE_FLOAT32, data=latents(1).tobytes())
        )
        _, call = stub.Decode.with_call(request)
        trailers = dict(call.trailing_metadata())
        assert float(trailers["x-queue-ms"]) >= 0 and float(trailers["x-compute-ms"]) > 0
        _, call = stub.ListModels.with_call(pb.ListModelsRequest())
        assert dict(call.trailing_metadata()) == {"x-queue-ms": "0.000", "x-compute-ms": "0.000"}
        with pytest.raises(grpc.RpcError) as caught:
            stub.Sample(pb.SampleRequest(n=0))
        assert {"x-queue-ms", "x-compute-ms"} <= dict(caught.value.trailing_metadata()).keys()  # type: ignore[attr-defined]


def test_the_async_client_gives_the_same_answers(server: RunningServer, client: VaeClient) -> None:
    async def main() -> None:
        async with AsyncVaeClient(server.target) as aclient:
            sampled = await aclient.sample(3, seed=21)
            np.testing.assert_array_equal(sampled.images, client.sample(3, seed=21).images)
            chunks = [chunk async for chunk in aclient.sample_stream(10, seed=21)]
            np.testing.assert_array_equal(
                np.concatenate([c.latents for c in chunks]), client.sample(10, seed=21).latents
            )
            x = images(2)
            np.testing.assert_array_equal((await aclient.encode(x)).mu, client.encode(x).mu)
            np.testing.assert_array_equal((await aclient.reconstruct(x)).error, client.reconstruct(x).error)
            np.testing.assert_array_equal(
                (await aclient.interpolate(x[0], x[1], steps=3)).images,
                client.interpolate(x[0], x[1], steps=3).images,
            )
            assert (await aclient.model_info()) == client.model_info()
            assert (await aclient.list_models()) == client.list_models()
            np.testing.assert_array_equal(
                (await aclient.decode(latents(2))).images, client.decode(latents(2)).images
            )

    asyncio.run(main())


def test_versions_pinning_and_refusing_a_version_that_fails_verification(
    versioned_repo: Path, start_server: Callable[..., RunningServer]
) -> None:
    running = start_server(versioned_repo)
    with VaeClient(running.target) as client:
        # tiny/3 fails verification (sha256, directory), so the newest version that loads, 2, is the default.
        assert [(m.version, m.is_default) for m in client.list_models()] == [(1, False), (2, True)]
        z = latents(2)
        newest, pinned = client.decode(z), client.decode(z, model="tiny", version=1)
        assert (newest.model, pinned.model) == (("tiny", 2), ("tiny", 1))
        assert not np.allclose(newest.images, pinned.images)
        with pytest.raises(grpc.RpcError) as caught:
            client.decode(z, version=3)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert caught.value.details() == "model 'tiny' has no version 3; loaded versions: 1, 2"  # type: ignore[attr-defined]
    assert running.metric("vae_model_load_failures_total", name="tiny") == 1
    assert running.metric("vae_model_info", name="tiny", version="2", provider="CPUExecutionProvider") == 1
    assert running.metric("vae_model_info", name="tiny", version="3", provider="CPUExecutionProvider") == 0


def test_a_graph_asked_for_cuda_on_a_cpu_build_runs_on_cpu_and_says_so(
    tiny_model_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    decoder = tiny_model_repo / "tiny" / "1" / "decoder.onnx"
    # The CUDA options must be accepted as they are; onnxruntime itself warns that CUDA is missing.
    with (
        caplog.at_level(logging.WARNING, logger="repository.runtime"),
        pytest.warns(UserWarning, match="CUDA"),
    ):
        graph = Graph(decoder, placement=Placement(CUDA, 0))
    assert graph.provider == CPU
    assert "asked for CUDAExecutionProvider, onnxruntime runs it on CPUExecutionProvider" in caplog.text
    probs = graph.run({"z": latents(2)}, ("probs",))
    assert list(probs) == ["probs"] and probs["probs"].shape == (2, *IMAGE)
