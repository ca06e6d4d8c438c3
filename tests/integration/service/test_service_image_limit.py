"""--max-image-pixels: images of a size the caller chose, and latents decoding to one, refused above it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers.autoencoders import build_autoencoder, declare_prior, import_autoencoder
from helpers.servers import RunningServer

from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc
from wire.tensors import tensor, to_numpy

# 24x32 is at the limit; 32x32 is over it, and so is the tiny model's fixed 28x28 (784 pixels).
LIMIT = 24 * 32
SD, SD_PRIOR = pb.ModelRef(name="sd"), pb.ModelRef(name="sd-prior")


@pytest.fixture(scope="module")
def stub(
    tiny_model_repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_server: Callable[..., RunningServer],
) -> vae_pb2_grpc.VaeServiceStub:
    """tiny/1 (28x28, fixed), sd/1 (any size) and sd-prior/1 (the same, declaring a prior, for Sample)."""
    repo = tmp_path_factory.mktemp("image-limit") / "models"
    shutil.copytree(tiny_model_repo, repo)
    vae = build_autoencoder("sd")
    for name in ("sd", "sd-prior"):
        version = import_autoencoder(vae, tmp_path_factory.mktemp(name), name)
        if name == "sd-prior":
            declare_prior(version)
        shutil.copytree(version.parent, repo / name)
    server = start_server(repo, max_image_pixels=LIMIT)
    return vae_pb2_grpc.VaeServiceStub(grpc.insecure_channel(server.target))


def _refused(call: Callable[[], object]) -> str:
    """The details of the INVALID_ARGUMENT that `call` must raise."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    details = str(caught.value.details())
    assert f"limit of {LIMIT} set by --max-image-pixels (VAE_MAX_IMAGE_PIXELS)" in details, details
    return details


def _images(n: int, height: int, width: int) -> pb.Tensor:
    return tensor(np.random.default_rng(0).uniform(-1, 1, (n, 3, height, width)).astype(np.float32))


def test_images_at_the_limit_are_served_and_above_it_refused(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    encoded = stub.Encode(pb.EncodeRequest(model=SD, images=_images(2, 24, 32)))
    assert to_numpy(encoded.mu, "mu").shape == (2, 4, 3, 4)
    details = _refused(lambda: stub.Encode(pb.EncodeRequest(model=SD, images=_images(1, 32, 32))))
    assert details.startswith("images: images of 32x32: 1024 pixels per image")
    _refused(lambda: stub.Reconstruct(pb.ReconstructRequest(model=SD, images=_images(1, 40, 24))))
    _refused(lambda: stub.Interpolate(pb.InterpolateRequest(model=SD, images=_images(2, 32, 32), steps=2)))


def test_latents_that_would_decode_above_the_limit_are_refused(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    at_limit = np.zeros((1, 4, 3, 4), np.float32)  # 24x32 images
    decoded = stub.Decode(pb.DecodeRequest(model=SD, latents=tensor(at_limit)))
    assert to_numpy(decoded.images, "images").shape == (1, 3, 24, 32)
    over = tensor(np.zeros((1, 4, 4, 4), np.float32))
    details = _refused(lambda: stub.Decode(pb.DecodeRequest(model=SD, latents=over)))
    assert details.startswith("latents: [4, 4, 4] decode to images of 32x32: 1024 pixels per image")
    pair = tensor(np.zeros((2, 4, 4, 4), np.float32))
    _refused(lambda: stub.Interpolate(pb.InterpolateRequest(model=SD, latents=pair, steps=3)))


def test_sample_sizes_above_the_limit_are_refused(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    answer = stub.Sample(pb.SampleRequest(model=SD_PRIOR, n=1, seed=0, height=32, width=24))
    assert to_numpy(answer.images, "images").shape == (1, 3, 32, 24)
    request = pb.SampleRequest(model=SD_PRIOR, n=1, height=32, width=32)
    assert _refused(lambda: stub.Sample(request)).startswith("height, width: images of 32x32")
    assert _refused(lambda: list(stub.SampleStream(request))).startswith("height, width: images of 32x32")


def test_a_model_of_one_size_is_served_at_its_size_whatever_the_limit(
    stub: vae_pb2_grpc.VaeServiceStub,
) -> None:
    # The limit is on sizes callers choose: tiny's 28x28 is over it, and fixed by whoever published it.
    images = np.zeros((1, 1, 28, 28), np.float32)
    encoded = stub.Encode(pb.EncodeRequest(images=tensor(images)))
    decoded = stub.Decode(pb.DecodeRequest(latents=encoded.mu))
    assert to_numpy(decoded.images, "images").shape == (1, 1, 28, 28)
