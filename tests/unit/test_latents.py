"""Prior and posterior draws from per-request streams, interpolation paths, reconstruction error."""

from __future__ import annotations

import numpy as np

from repository.prior import StandardNormal
from service import latents


def test_a_seeded_stream_reproduces_with_plain_numpy() -> None:
    shared = np.random.default_rng(1)
    z = StandardNormal(4).sample(latents.stream(42, shared), 5, temperature=0.5)
    expected = np.random.Generator(np.random.PCG64(42)).standard_normal((5, 4), dtype=np.float32) * 0.5
    np.testing.assert_array_equal(z, expected)
    assert z.dtype == np.float32


def test_unseeded_draws_come_from_the_shared_generator() -> None:
    shared = np.random.default_rng(3)
    assert latents.stream(None, shared) is shared


def test_temperature_zero_gives_the_prior_mean() -> None:
    z = StandardNormal(4).sample(np.random.default_rng(0), 3, temperature=0.0)
    assert not z.any()


def test_posterior_draws_have_the_posterior_moments() -> None:
    mu = np.array([[1.0, -2.0]], np.float32)
    logvar = np.log(np.array([[0.25, 4.0]], np.float32))
    z = latents.posterior(np.random.default_rng(0), mu, logvar, k=20000)
    assert z.shape == (1, 20000, 2)
    np.testing.assert_allclose(z[0].mean(axis=0), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(z[0].std(axis=0), [0.5, 2.0], rtol=0.03)


def test_linear_interpolation_includes_both_ends() -> None:
    a, b = np.array([0.0, 2.0], np.float32), np.array([4.0, -2.0], np.float32)
    path = latents.interpolate(a, b, 5, spherical=False)
    np.testing.assert_allclose(path, [[0, 2], [1, 1], [2, 0], [3, -1], [4, -2]])


def test_spherical_interpolation_keeps_the_norm_of_equal_norm_ends() -> None:
    a, b = np.array([3.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32)
    path = latents.interpolate(a, b, 7, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 3.0, rtol=1e-6)
    np.testing.assert_allclose(path[[0, -1]], [a, b], atol=1e-6)
    # Linear interpolation would pass through (1.5, 1.5), of norm ~2.12.
    assert np.linalg.norm(latents.interpolate(a, b, 3, spherical=False)[1]) < 2.2


def test_spherical_interpolation_of_parallel_ends_falls_back_to_linear() -> None:
    a = np.array([1.0, 1.0], np.float32)
    path = latents.interpolate(a, 2 * a, 3, spherical=True)
    np.testing.assert_allclose(path, [[1, 1], [1.5, 1.5], [2, 2]])


def test_reconstruction_error_is_the_mean_squared_error_per_item() -> None:
    images = np.zeros((2, 1, 2, 2), np.float32)
    recon = images.copy()
    recon[1, 0, 0, 0] = 1.0
    np.testing.assert_allclose(latents.reconstruction_error(images, recon), [0.0, 0.25])
