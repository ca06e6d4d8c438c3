"""The service serving imported AutoencoderKLs of other shapes, every RPC compared with diffusers in torch.

flux/1: RGB -> 16 latent channels with a shift factor; grey/1: one channel -> 2, factor 4, any size;
wide/1: grey's weights at a fixed, non-square size. All from helpers.autoencoders.shapes_repo, imported
once per session (the `shapes_server` fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from helpers.autoencoders import WIDE_SIZE, build_autoencoder, diffusers_decode, diffusers_encode
from helpers.servers import RunningServer

from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc
from wire.tensors import tensor, to_numpy

TOLERANCE = 1e-4
FLUX, GREY, WIDE = pb.ModelRef(name="flux"), pb.ModelRef(name="grey"), pb.ModelRef(name="wide")


@pytest.fixture(scope="module")
def stub(shapes_server: RunningServer) -> vae_pb2_grpc.VaeServiceStub:
    return vae_pb2_grpc.VaeServiceStub(grpc.insecure_channel(shapes_server.target))


@pytest.fixture(scope="module")
def torch_models() -> dict[str, Any]:
    """The models in torch; wide/1 has grey/1's weights (sample_size changes none)."""
    grey = build_autoencoder("grey")
    return {"flux": build_autoencoder("flux"), "grey": grey, "wide": grey}


def _images(n: int, channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, channels, height, width)).astype(np.float32)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE


def _refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_model_info_describes_each_shape(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    flux, grey, wide = (stub.GetModelInfo(pb.GetModelInfoRequest(model=m)) for m in (FLUX, GREY, WIDE))
    assert (flux.image_channels, list(flux.image_size), flux.image_multiple_of) == (3, [], 8)
    assert (flux.latent_channels, flux.latent_downsampling, flux.has_prior) == (16, 8, False)
    assert flux.scaling_factor == pytest.approx(0.3611) and flux.shift_factor == pytest.approx(0.1159)
    assert (grey.image_channels, list(grey.image_size), grey.image_multiple_of) == (1, [], 4)
    assert (grey.latent_channels, grey.latent_downsampling, grey.has_prior, grey.scorable) == (
        2,
        4,
        True,
        False,
    )
    assert (list(wide.image_size), list(wide.image_shape), wide.latent_dim) == (
        [*WIDE_SIZE],
        [1, *WIDE_SIZE],
        0,
    )
    assert list(wide.value_range) == [-1.0, 1.0] and wide.decoder_output == "image"


@pytest.mark.parametrize(
    ("model", "channels", "height", "width"),
    [("flux", 3, 32, 48), ("flux", 3, 16, 16), ("grey", 1, 12, 20), ("wide", 1, *WIDE_SIZE)],
)
def test_encode_decode_reconstruct_match_diffusers(
    stub: vae_pb2_grpc.VaeServiceStub,
    torch_models: dict[str, Any],
    model: str,
    channels: int,
    height: int,
    width: int,
) -> None:
    ref, vae = pb.ModelRef(name=model), torch_models[model]
    x = _images(3, channels, height, width)
    mu, logvar = diffusers_encode(vae, x)
    encoded = stub.Encode(pb.EncodeRequest(model=ref, images=tensor(x)))
    _close(to_numpy(encoded.mu, "mu"), mu)
    _close(to_numpy(encoded.logvar, "logvar"), logvar)
    pictures = diffusers_decode(vae, mu)
    _close(to_numpy(stub.Decode(pb.DecodeRequest(model=ref, latents=tensor(mu))).images, "images"), pictures)
    reconstructed = stub.Reconstruct(pb.ReconstructRequest(model=ref, images=tensor(x)))
    _close(to_numpy(reconstructed.images, "images"), pictures)
    want = ((pictures - x) ** 2).reshape(3, -1).mean(axis=1) / 4  # over pixels mapped to [0, 1]
    np.testing.assert_allclose(to_numpy(reconstructed.error, "error"), want, rtol=1e-3, atol=1e-6)


def test_flux_scaled_latents_are_shifted_then_scaled(
    stub: vae_pb2_grpc.VaeServiceStub, torch_models: dict[str, Any]
) -> None:
    vae = torch_models["flux"]
    x = _images(2, 3, 24, 40, seed=1)
    mu, logvar = diffusers_encode(vae, x)
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor
    assert shift != 0  # the shift is what this test is about
    scaled = stub.Encode(pb.EncodeRequest(model=FLUX, images=tensor(x), scaled=True))
    _close(to_numpy(scaled.mu, "mu"), (mu - shift) * scale)
    _close(to_numpy(scaled.logvar, "logvar"), logvar + 2 * np.log(scale))
    # A pipeline's latents decode as the latents they came from.
    decoded = stub.Decode(pb.DecodeRequest(model=FLUX, latents=scaled.mu, scaled=True))
    _close(to_numpy(decoded.images, "images"), diffusers_decode(vae, mu))
    unscaled = stub.Decode(pb.DecodeRequest(model=FLUX, latents=scaled.mu))
    assert np.abs(to_numpy(unscaled.images, "images") - diffusers_decode(vae, mu)).max() > 10 * TOLERANCE


@pytest.mark.parametrize("model", ["flux", "grey"])
def test_interpolate_decodes_the_path_as_diffusers_does(
    stub: vae_pb2_grpc.VaeServiceStub, torch_models: dict[str, Any], model: str
) -> None:
    vae = torch_models[model]
    ends = np.random.default_rng(4).standard_normal((2, vae.config.latent_channels, 3, 5), dtype=np.float32)
    answer = stub.Interpolate(
        pb.InterpolateRequest(
            model=pb.ModelRef(name=model),
            latents=tensor(ends),
            steps=3,
            method=pb.INTERPOLATION_METHOD_LINEAR,
        )
    )
    path = to_numpy(answer.latents, "latents")
    _close(path, np.stack([ends[0], (ends[0] + ends[1]) / 2, ends[1]]))
    _close(to_numpy(answer.images, "images"), diffusers_decode(vae, path))


def test_interpolate_between_images_of_the_fixed_size(
    stub: vae_pb2_grpc.VaeServiceStub, torch_models: dict[str, Any]
) -> None:
    x = _images(2, 1, *WIDE_SIZE, seed=6)
    answer = stub.Interpolate(pb.InterpolateRequest(model=WIDE, images=tensor(x), steps=2))
    mu, _ = diffusers_encode(torch_models["wide"], x)
    _close(to_numpy(answer.latents, "latents"), mu)
    _close(to_numpy(answer.images, "images"), diffusers_decode(torch_models["wide"], mu))


@pytest.mark.parametrize(("model", "height", "width"), [("grey", 8, 20), ("wide", 0, 0)])
def test_sample_decodes_normal_latents_as_diffusers_does(
    stub: vae_pb2_grpc.VaeServiceStub, torch_models: dict[str, Any], model: str, height: int, width: int
) -> None:
    ref = pb.ModelRef(name=model)
    answer = stub.Sample(pb.SampleRequest(model=ref, n=3, seed=9, height=height, width=width))
    z = to_numpy(answer.latents, "latents")
    size = (height, width) if height else WIDE_SIZE  # 0 x 0: the fixed size
    want = np.random.Generator(np.random.PCG64(9)).standard_normal(
        (3, 2, size[0] // 4, size[1] // 4), np.float32
    )
    np.testing.assert_array_equal(z, want)
    _close(to_numpy(answer.images, "images"), diffusers_decode(torch_models[model], z))
    streamed = stub.SampleStream(pb.SampleRequest(model=ref, n=3, seed=9, height=height, width=width))
    chunks = [to_numpy(chunk.images, "images") for chunk in streamed]
    np.testing.assert_array_equal(np.concatenate(chunks), to_numpy(answer.images, "images"))


def test_what_a_shape_does_not_take_is_refused_with_the_reason(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    square = _refused(lambda: stub.Encode(pb.EncodeRequest(model=WIDE, images=tensor(_images(1, 1, 24, 24)))))
    assert square.code() == grpc.StatusCode.INVALID_ARGUMENT and "[batch, 1, 16, 24]" in square.details()
    transposed = _refused(lambda: stub.Sample(pb.SampleRequest(model=WIDE, n=1, height=24, width=16)))
    assert (
        transposed.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "takes [16, 24] images" in transposed.details()
    )
    odd = _refused(lambda: stub.Encode(pb.EncodeRequest(model=GREY, images=tensor(_images(1, 1, 12, 18)))))
    assert odd.code() == grpc.StatusCode.INVALID_ARGUMENT and "multiples of 4" in odd.details()
    rgb = _refused(lambda: stub.Encode(pb.EncodeRequest(model=GREY, images=tensor(_images(1, 3, 12, 12)))))
    assert rgb.code() == grpc.StatusCode.INVALID_ARGUMENT and "[batch, 1, *, *]" in rgb.details()
    four = np.zeros((1, 4, 2, 2), np.float32)  # SD's 4 channels, not flux's 16
    latents = _refused(lambda: stub.Decode(pb.DecodeRequest(model=FLUX, latents=tensor(four))))
    assert latents.code() == grpc.StatusCode.INVALID_ARGUMENT
    no_prior = _refused(lambda: stub.Sample(pb.SampleRequest(model=FLUX, n=1, height=16, width=16)))
    assert no_prior.code() == grpc.StatusCode.FAILED_PRECONDITION and "no prior" in no_prior.details()
    for model, channels, size in ((FLUX, 3, (16, 16)), (GREY, 1, (8, 8)), (WIDE, 1, WIDE_SIZE)):
        images = tensor(_images(1, channels, *size))
        score = _refused(lambda m=model, i=images: stub.Score(pb.ScoreRequest(model=m, images=i, samples=1)))
        assert score.code() == grpc.StatusCode.FAILED_PRECONDITION and "no likelihood" in score.details()
