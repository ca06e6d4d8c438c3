"""The torch-free prior (repository/prior.py): densities, draws, and the prior files it refuses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from repository.prior import GaussianMixture, PriorError, StandardNormal, read_mixture, save_prior
from training.priors import log_mixture

K, D = 3, 2
MEANS = np.array([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0]], np.float32)
LOGVARS = np.log(np.array([[0.25, 1.0], [1.0, 1.0], [4.0, 0.5]], np.float32))
WEIGHTS = np.array([0.2, 0.3, 0.5])
MIXTURE = GaussianMixture(MEANS, LOGVARS, np.log(WEIGHTS).astype(np.float32))


def test_standard_normal_draws_are_the_streams_normals_times_the_temperature() -> None:
    for temperature in (1.0, 0.3, 0.0):
        z = StandardNormal(5).sample(np.random.Generator(np.random.PCG64(9)), 4, temperature)
        expected = np.random.Generator(np.random.PCG64(9)).standard_normal((4, 5), dtype=np.float32)
        np.testing.assert_array_equal(z, expected * np.float32(temperature))
        assert z.dtype == np.float32


def test_mixture_log_prob_agrees_with_training_and_with_a_brute_force_sum() -> None:
    z = np.random.default_rng(0).normal(0, 8, (6, D))
    components = tuple(torch.from_numpy(a).double() for a in (MEANS, LOGVARS, MIXTURE.log_weights))
    from_training = log_mixture(torch.from_numpy(z), components).numpy()  # type: ignore[arg-type]
    stds = np.exp(0.5 * LOGVARS.astype(np.float64))
    densities = np.exp(-0.5 * ((z[:, None, :] - MEANS) / stds) ** 2) / (math.sqrt(2 * math.pi) * stds)
    brute = np.log(np.sum(WEIGHTS * np.prod(densities, axis=2), axis=1))
    got = MIXTURE.log_prob(z)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, brute, rtol=1e-6)
    np.testing.assert_allclose(got, from_training, rtol=1e-6)


def test_far_from_every_component_the_log_prob_stays_finite() -> None:
    assert np.isfinite(MIXTURE.log_prob(np.full((1, D), 1e3))).all()


def _nearest(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.argmin(((z[:, None, :] - MEANS) ** 2).sum(-1), axis=1))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_mixture_draws_follow_the_weights_and_temperature_scales_each_std(temperature: float) -> None:
    z = MIXTURE.sample(np.random.default_rng(3), 40000, temperature)
    assert z.shape == (40000, D) and z.dtype == np.float32
    nearest = _nearest(z)
    np.testing.assert_allclose(np.bincount(nearest, minlength=K) / len(z), WEIGHTS, atol=0.01)
    for k in range(K):
        spread = z[nearest == k].std(axis=0)
        np.testing.assert_allclose(spread, temperature * np.exp(0.5 * LOGVARS[k]), rtol=0.05)


def test_temperature_zero_gives_the_component_means() -> None:
    z = MIXTURE.sample(np.random.default_rng(4), 50, 0.0)
    assert {tuple(row) for row in z.tolist()} <= {tuple(row) for row in MEANS.tolist()}


def test_drawing_in_chunks_gives_the_same_latents_as_one_draw() -> None:
    whole = MIXTURE.sample(np.random.default_rng(5), 17, 0.7)
    rng = np.random.default_rng(5)
    chunked = np.concatenate([MIXTURE.sample(rng, 10, 0.7), MIXTURE.sample(rng, 7, 0.7)])
    np.testing.assert_array_equal(whole, chunked)


def _write(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    return path


def test_save_and_read_round_trip(tmp_path: Path) -> None:
    save_prior(tmp_path / "prior.npz", MEANS, LOGVARS, MIXTURE.log_weights)
    read = read_mixture(tmp_path / "prior.npz", K, D)
    for name in ("means", "logvars", "log_weights"):
        np.testing.assert_array_equal(getattr(read, name), getattr(MIXTURE, name))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"means": MEANS[:2]}, r"means is float32 \[2, 2\]"),
        ({"logvars": LOGVARS.astype(np.float64)}, "need float32"),
        ({"means": np.where(MEANS == 0, np.nan, MEANS).astype(np.float32)}, "NaN or Inf"),
        ({"log_weights": np.log([0.2, 0.3, 0.6]).astype(np.float32)}, "sum to 1.1"),
        ({"extra": np.zeros(1, np.float32)}, "holds arrays"),
        ({"means": np.array([object()] * 6).reshape(K, D)}, "plain arrays"),
    ],
)
def test_ill_formed_prior_files_are_refused(
    tmp_path: Path, change: dict[str, np.ndarray], message: str
) -> None:
    arrays = {"means": MEANS, "logvars": LOGVARS, "log_weights": MIXTURE.log_weights, **change}
    with pytest.raises(PriorError, match=message):
        read_mixture(_write(tmp_path / "prior.npz", **arrays), K, D)


def test_a_file_that_is_not_an_npz_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prior.npz").write_bytes(b"not a zip")
    with pytest.raises(PriorError, match="does not load"):
        read_mixture(tmp_path / "prior.npz", K, D)
