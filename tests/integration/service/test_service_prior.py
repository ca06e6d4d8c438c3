"""A learned prior served: Sample and SampleStream draw from the model's mixture, Score uses its log p(z).

tiny-mixture/1 has three unit-variance components TINY_MIXTURE_SPREAD apart with weights
softmax([0, 1, 2]) (tests/conftest.py), so every draw is plainly near one component mean.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers.servers import RunningServer
from PIL import Image

from client.clients import VaeClient
from repository.manifest import read_manifest
from repository.prior import GaussianMixture, StandardNormal, load_prior
from repository.runtime import Graph
from repository.scoring import draws, likelihood_of, score_in_process
from training.pictures import prior_samples, prior_samples_side_by_side

MIXTURE, LATENT = "tiny-mixture", 8
WEIGHTS = np.exp(np.arange(3.0)) / np.exp(np.arange(3.0)).sum()  # softmax([0, 1, 2])


@pytest.fixture(scope="module")
def repo(tiny_model_repo: Path, tiny_mixture_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny/1 (the standard normal prior) and tiny-mixture/1, served together."""
    repo = tmp_path_factory.mktemp("priors") / "models"
    shutil.copytree(tiny_model_repo, repo)
    shutil.copytree(tiny_mixture_repo / MIXTURE, repo / MIXTURE)
    return repo


@pytest.fixture(scope="module")
def client(repo: Path, start_server: Callable[..., RunningServer]) -> VaeClient:
    return VaeClient(start_server(repo).target)


@pytest.fixture(scope="module")
def mixture(repo: Path) -> GaussianMixture:
    version = repo / MIXTURE / "1"
    prior = load_prior(version, read_manifest(version))
    assert isinstance(prior, GaussianMixture)
    return prior


def _nearest(z: np.ndarray, means: np.ndarray) -> np.ndarray:
    return np.asarray(np.argmin(((z[:, None, :] - means) ** 2).sum(-1), axis=1))


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_sample_draws_from_the_models_mixture(
    client: VaeClient, mixture: GaussianMixture, temperature: float
) -> None:
    z = np.concatenate(
        [client.sample(64, seed=s, temperature=temperature, model=MIXTURE).latents for s in range(30)]
    )
    nearest = _nearest(z, mixture.means)
    # 1920 draws: each share within 0.05 of its weight (about 4 standard errors).
    np.testing.assert_allclose(np.bincount(nearest, minlength=3) / len(z), WEIGHTS, atol=0.05)
    # Around its component's mean, each draw spreads with the component's std times the temperature.
    spread = (z - mixture.means[nearest]).std()
    assert spread == pytest.approx(temperature, rel=0.1)


def test_seeded_mixture_draws_are_the_priors_own_and_the_stream_gives_the_same(
    client: VaeClient, mixture: GaussianMixture
) -> None:
    got = client.sample(20, seed=4, temperature=0.5, model=MIXTURE)
    expected = mixture.sample(np.random.Generator(np.random.PCG64(4)), 20, 0.5)
    np.testing.assert_array_equal(got.latents, expected)
    chunks = list(client.sample_stream(20, seed=4, temperature=0.5, model=MIXTURE))
    assert len(chunks) > 1  # in batches of 8: the chunks really are drawn one after another
    np.testing.assert_array_equal(np.concatenate([c.latents for c in chunks]), got.latents)
    assert {tuple(r) for r in client.sample(9, seed=1, temperature=0.0, model=MIXTURE).latents.tolist()} <= {
        tuple(r) for r in mixture.means.tolist()
    }


def test_a_standard_normal_models_draws_are_unchanged(client: VaeClient) -> None:
    # Exactly what Sample drew before learned priors: the request's PCG64 normals times the temperature.
    for temperature in (1.0, 0.7):
        got = client.sample(6, seed=3, temperature=temperature).latents
        normals = np.random.Generator(np.random.PCG64(3)).standard_normal((6, LATENT), dtype=np.float32)
        np.testing.assert_array_equal(got, normals * np.float32(temperature))


def test_model_info_names_the_prior(client: VaeClient) -> None:
    assert client.model_info(model=MIXTURE).prior == "mixture"
    assert client.model_info().prior == "normal"


def test_score_uses_the_mixtures_log_prob(client: VaeClient, repo: Path, mixture: GaussianMixture) -> None:
    version = repo / MIXTURE / "1"
    images = (np.random.default_rng(0).random((4, 1, 28, 28)) < 0.3).astype(np.float32)
    got = client.score(images, samples=20, seed=6, model=MIXTURE)
    want = score_in_process(
        Graph(version / "encoder.onnx"),
        Graph(version / "decoder.onnx"),
        likelihood_of(read_manifest(version)),
        mixture,
        images,
        draws(np.random.Generator(np.random.PCG64(6)), 20, LATENT),
    )
    for name in ("log_likelihood", "elbo", "kl"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-4)
    # Under the standard normal the same graphs give other numbers: the prior really is the mixture's.
    standard = score_in_process(
        Graph(version / "encoder.onnx"),
        Graph(version / "decoder.onnx"),
        likelihood_of(read_manifest(version)),
        StandardNormal(LATENT),
        images,
        draws(np.random.Generator(np.random.PCG64(6)), 20, LATENT),
    )
    assert np.abs(got.log_likelihood - standard.log_likelihood).min() > 1.0


def test_a_prior_file_that_changes_on_disk_stops_its_version_answering(
    tiny_mixture_repo: Path, tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_mixture_repo, repo)
    server = start_server(repo, model=MIXTURE)
    prior_file = repo / MIXTURE / "1" / "prior.npz"
    with np.load(prior_file) as data:
        arrays = {name: data[name] for name in data.files}
    np.savez(prior_file, **{**arrays, "means": -arrays["means"]})  # same shapes, other prior
    server.call(server.server.reload())
    assert server.metric("vae_model_files_changed_total", name=MIXTURE, version="1") == 1
    with pytest.raises(grpc.RpcError) as caught:
        VaeClient(server.target).sample(1, model=MIXTURE)
    # It was the only version of the only model: nothing is left to answer.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


@pytest.mark.parametrize(("model", "temperature"), [(MIXTURE, 0.8), ("tiny", 1.0)])
def test_prior_sample_pictures_are_what_the_service_samples(
    client: VaeClient, repo: Path, model: str, temperature: float
) -> None:
    # docs/results.md's side-by-side pictures claim to show what `vae client sample --seed` returns.
    pictured = prior_samples(repo / model / "1", 12, temperature, seed=5)
    served = client.sample(12, seed=5, temperature=temperature, model=model).images
    np.testing.assert_allclose(pictured, served, rtol=0, atol=1e-6)


def test_side_by_side_prior_samples_of_two_versions(repo: Path, tiny_cvae_repo: Path, tmp_path: Path) -> None:
    versions = [repo / "tiny" / "1", repo / MIXTURE / "1"]
    sizes = []
    for rows in (1, 2):
        out = prior_samples_side_by_side(versions[:rows], [1.0, 0.8], tmp_path / f"{rows}.png", n=16)
        with Image.open(out) as picture:
            sizes.append(picture.size)
            assert len(picture.getcolors(maxcolors=1 << 20) or []) > 50  # drawn digits, not a blank page
    assert sizes[1][0] == sizes[0][0] and sizes[1][1] == pytest.approx(2 * sizes[0][1], abs=2)  # a row each
    with pytest.raises(ValueError, match="conditional"):
        prior_samples(tiny_cvae_repo / "tiny-cvae" / "1", 4, 1.0, seed=0)
