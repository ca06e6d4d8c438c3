"""The service serving an imported AutoencoderKL (spatial latents, RGB of any size) beside the tiny v1 model.

A small SD-shaped AutoencoderKL with random weights is built from its config, imported with
`vae import diffusers` and served; every RPC is compared with diffusers in torch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from helpers.autoencoders import (
    build_autoencoder,
    declare_prior,
    diffusers_decode,
    diffusers_encode,
    import_autoencoder,
)
from helpers.servers import RunningServer

from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc
from wire.tensors import tensor, to_numpy

SD = pb.ModelRef(name="sd")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def autoencoder() -> Any:
    return build_autoencoder("sd")


@pytest.fixture(scope="module")
def repo(autoencoder: Any, tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny/1 (format 1) and sd/1 (imported); sd-prior/1: sd/1 declaring has_prior, for Sample."""
    root = tmp_path_factory.mktemp("any-vae")
    repo = root / "models"
    shutil.copytree(tiny_model_repo, repo)
    version = import_autoencoder(autoencoder, root, "sd")
    shutil.copytree(version.parent, repo / "sd")
    prior = import_autoencoder(autoencoder, tmp_path_factory.mktemp("prior"), "sd-prior")
    declare_prior(prior)
    shutil.copytree(prior.parent, repo / "sd-prior")
    return repo


@pytest.fixture(scope="module")
def stub(repo: Path, start_server: Callable[..., RunningServer]) -> vae_pb2_grpc.VaeServiceStub:
    server = start_server(repo)
    return vae_pb2_grpc.VaeServiceStub(grpc.insecure_channel(server.target))


def _images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, height, width)).astype(np.float32)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE


def test_model_info_describes_the_imported_model(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model=SD))
    assert (info.latent_dim, list(info.image_shape), list(info.image_size)) == (0, [], [])
    assert (info.image_channels, info.image_multiple_of, list(info.value_range)) == (3, 8, [-1.0, 1.0])
    assert (info.latent_channels, info.latent_downsampling) == (4, 8)
    assert info.scaling_factor == pytest.approx(0.18215) and info.shift_factor == 0.0
    assert (info.decoder_output, info.has_prior, info.scorable) == ("image", False, False)
    tiny = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (tiny.latent_dim, list(tiny.image_shape), list(tiny.image_size)) == (8, [1, 28, 28], [28, 28])
    assert (tiny.latent_channels, tiny.latent_downsampling, list(tiny.value_range)) == (8, 0, [0.0, 1.0])
    assert (tiny.decoder_output, tiny.likelihood, tiny.has_prior, tiny.scorable) == (
        "bernoulli",
        "bernoulli",
        True,
        True,
    )


@pytest.mark.parametrize(("height", "width"), [(64, 64), (32, 80)])
def test_encode_decode_reconstruct_match_diffusers(
    stub: vae_pb2_grpc.VaeServiceStub, autoencoder: Any, height: int, width: int
) -> None:
    x = _images(3, height, width)
    mu, logvar = diffusers_encode(autoencoder, x)
    encoded = stub.Encode(pb.EncodeRequest(model=SD, images=tensor(x)))
    _close(to_numpy(encoded.mu, "mu"), mu)
    _close(to_numpy(encoded.logvar, "logvar"), logvar)
    decoded = stub.Decode(pb.DecodeRequest(model=SD, latents=tensor(mu)))
    pictures = diffusers_decode(autoencoder, mu)
    _close(to_numpy(decoded.images, "images"), pictures)
    reconstructed = stub.Reconstruct(pb.ReconstructRequest(model=SD, images=tensor(x)))
    _close(to_numpy(reconstructed.images, "images"), pictures)
    # The error is over pixels mapped to [0, 1]: a quarter of the [-1, 1] squared error.
    want = ((pictures - x) ** 2).reshape(3, -1).mean(axis=1) / 4
    np.testing.assert_allclose(to_numpy(reconstructed.error, "error"), want, rtol=1e-3, atol=1e-6)


def test_scaled_latents_are_what_a_diffusion_pipeline_uses(
    stub: vae_pb2_grpc.VaeServiceStub, autoencoder: Any
) -> None:
    x = _images(2, 32, 32, seed=1)
    mu, logvar = diffusers_encode(autoencoder, x)
    factor = autoencoder.config.scaling_factor
    scaled = stub.Encode(pb.EncodeRequest(model=SD, images=tensor(x), scaled=True))
    _close(to_numpy(scaled.mu, "mu"), mu * factor)
    _close(to_numpy(scaled.logvar, "logvar"), logvar + 2 * np.log(factor))
    decoded = stub.Decode(pb.DecodeRequest(model=SD, latents=scaled.mu, scaled=True))
    _close(to_numpy(decoded.images, "images"), diffusers_decode(autoencoder, mu))


def test_uint8_images_map_onto_the_models_range(stub: vae_pb2_grpc.VaeServiceStub, autoencoder: Any) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (1, 3, 16, 24), dtype=np.uint8)
    encoded = stub.Encode(pb.EncodeRequest(model=SD, images=tensor(pixels)))
    mu, _ = diffusers_encode(autoencoder, pixels.astype(np.float32) * np.float32(2 / 255) - 1)
    _close(to_numpy(encoded.mu, "mu"), mu)
    decoded = stub.Decode(pb.DecodeRequest(model=SD, latents=encoded.mu, output_dtype=pb.DTYPE_UINT8))
    images = to_numpy(decoded.images, "images")
    expected = (diffusers_decode(autoencoder, to_numpy(encoded.mu, "mu")) + 1) / 2 * 255
    assert images.dtype == np.uint8 and np.abs(images.astype(np.float32) - expected).max() <= 0.51


def test_latents_are_the_same_alone_or_in_a_batch(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    batch = _images(3, 48, 24, seed=3)
    alone = stub.Encode(pb.EncodeRequest(model=SD, images=tensor(batch[1:2])))
    together = stub.Encode(pb.EncodeRequest(model=SD, images=tensor(batch)))
    assert to_numpy(alone.mu, "mu").tobytes() == to_numpy(together.mu, "mu")[1:2].tobytes()
    assert to_numpy(alone.logvar, "logvar").tobytes() == to_numpy(together.logvar, "logvar")[1:2].tobytes()


def test_two_image_sizes_at_once_are_both_answered(
    stub: vae_pb2_grpc.VaeServiceStub, autoencoder: Any
) -> None:
    sizes = [(64, 64), (40, 56)] * 4
    inputs = [_images(2, h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    with ThreadPoolExecutor(len(inputs)) as pool:
        answers = list(pool.map(lambda x: stub.Encode(pb.EncodeRequest(model=SD, images=tensor(x))), inputs))
    for x, answer in zip(inputs, answers, strict=True):
        _close(to_numpy(answer.mu, "mu"), diffusers_encode(autoencoder, x)[0])


def test_interpolate_runs_over_the_flattened_latent(
    stub: vae_pb2_grpc.VaeServiceStub, autoencoder: Any
) -> None:
    ends = np.random.default_rng(4).standard_normal((2, 4, 3, 5), dtype=np.float32)
    answer = stub.Interpolate(
        pb.InterpolateRequest(model=SD, latents=tensor(ends), steps=3, method=pb.INTERPOLATION_METHOD_LINEAR)
    )
    path = to_numpy(answer.latents, "latents")
    _close(path, np.stack([ends[0], (ends[0] + ends[1]) / 2, ends[1]]))
    _close(to_numpy(answer.images, "images"), diffusers_decode(autoencoder, path))
    spherical = stub.Interpolate(
        pb.InterpolateRequest(
            model=SD, latents=tensor(ends), steps=3, method=pb.INTERPOLATION_METHOD_SPHERICAL
        )
    )
    assert to_numpy(spherical.images, "images").shape == (3, 3, 24, 40)


def _refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_what_the_model_cannot_do_is_refused_with_the_reason(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    x = tensor(_images(1, 32, 32))
    score = _refused(lambda: stub.Score(pb.ScoreRequest(model=SD, images=x, samples=1)))
    assert score.code() == grpc.StatusCode.FAILED_PRECONDITION and "no likelihood" in score.details()
    sample = _refused(lambda: stub.Sample(pb.SampleRequest(model=SD, n=1, height=32, width=32)))
    assert sample.code() == grpc.StatusCode.FAILED_PRECONDITION and "no prior" in sample.details()
    odd = _refused(lambda: stub.Encode(pb.EncodeRequest(model=SD, images=tensor(_images(1, 30, 32)))))
    assert odd.code() == grpc.StatusCode.INVALID_ARGUMENT and "multiples of 8" in odd.details()
    grey = np.zeros((1, 1, 32, 32), np.float32)
    channels = _refused(lambda: stub.Encode(pb.EncodeRequest(model=SD, images=tensor(grey))))
    assert channels.code() == grpc.StatusCode.INVALID_ARGUMENT and "[batch, 3, *, *]" in channels.details()
    unit = _refused(lambda: stub.Encode(pb.EncodeRequest(model=SD, images=tensor(_images(1, 8, 8) + 1.5))))
    assert "must lie in [-1, 1]" in unit.details()
    flat = _refused(
        lambda: stub.Decode(pb.DecodeRequest(model=SD, latents=tensor(np.zeros((1, 4), np.float32))))
    )
    assert flat.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sample_draws_normal_latents_at_the_requested_size(
    stub: vae_pb2_grpc.VaeServiceStub, autoencoder: Any
) -> None:
    model = pb.ModelRef(name="sd-prior")
    answer = stub.Sample(pb.SampleRequest(model=model, n=2, seed=5, height=16, width=24))
    z = to_numpy(answer.latents, "latents")
    want = np.random.Generator(np.random.PCG64(5)).standard_normal((2, 4, 2, 3), dtype=np.float32)
    np.testing.assert_array_equal(z, want)
    _close(to_numpy(answer.images, "images"), diffusers_decode(autoencoder, z))
    missing = _refused(lambda: stub.Sample(pb.SampleRequest(model=model, n=1)))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT and "give their (H, W)" in missing.details()
