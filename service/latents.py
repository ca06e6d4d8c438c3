"""Latent-space arithmetic in numpy around the graphs: request streams, posterior draws, interpolation.

Random draws come from a per-request stream, numpy's PCG64 seeded with the request's seed, so a
seeded request gets the same numbers whatever else the server is doing; a client can reproduce
them with `np.random.Generator(np.random.PCG64(seed)).standard_normal(shape, dtype=np.float32)`
(prior draws: repository/prior.py says how each prior uses the stream).
"""

from __future__ import annotations

import numpy as np


def stream(seed: int | None, fallback: np.random.Generator) -> np.random.Generator:
    """The request's own generator when it has a seed; the server's shared one otherwise."""
    return fallback if seed is None else np.random.Generator(np.random.PCG64(seed))


def posterior(rng: np.random.Generator, mu: np.ndarray, logvar: np.ndarray, k: int) -> np.ndarray:
    """k reparameterized draws per item, z = mu + eps * exp(logvar / 2): shape [batch, k, *latent]."""
    eps = rng.standard_normal((len(mu), k, *mu.shape[1:]), dtype=np.float32)
    return mu[:, None] + eps * np.exp(np.float32(0.5) * logvar)[:, None]


def scale(mu: np.ndarray, logvar: np.ndarray, scaling: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A diffusion pipeline's latent distribution: (z - shift) * factor, its log-variance + 2 log factor."""
    factor, shift = scaling
    return (mu - np.float32(shift)) * np.float32(factor), logvar + np.float32(2 * np.log(factor))


def unscale(z: np.ndarray, scaling: tuple[float, float]) -> np.ndarray:
    """The decoder's z from a diffusion pipeline's latents: z / factor + shift."""
    factor, shift = scaling
    return np.asarray(z / np.float32(factor) + np.float32(shift), dtype=np.float32)


def interpolate(start: np.ndarray, end: np.ndarray, steps: int, spherical: bool) -> np.ndarray:
    """`steps` points from start to end, both included: [steps, *start.shape] float32.

    Spherical interpolation (Shoemake 1985; White 2016 for VAE latents) follows the great circle,
    so midpoints keep the norm typical of Gaussian draws instead of shrinking toward the origin.
    """
    shape = (steps, *start.shape)
    # A spatial latent is one point of its flattened space: its norm is that of the whole tensor.
    t = np.linspace(0.0, 1.0, steps)[:, None]
    a, b = start.astype(np.float64).ravel(), end.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if spherical and norms > 0:
        omega = np.arccos(np.clip(a @ b / norms, -1.0, 1.0))
        # Nearly parallel endpoints: sin(omega) -> 0 and slerp tends to lerp anyway.
        if np.sin(omega) > 1e-6:
            path: np.ndarray = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
            return path.astype(np.float32).reshape(shape)
    line: np.ndarray = (1 - t) * a + t * b
    return line.astype(np.float32).reshape(shape)


def reconstruction_error(images: np.ndarray, reconstructions: np.ndarray, span: float = 1.0) -> np.ndarray:
    """Mean squared error per item over its pixels mapped to [0, 1] (`span`: the range's width): [batch]."""
    diff = (reconstructions - images).reshape(len(images), -1)
    if span != 1.0:
        diff = diff * np.float32(1 / span)
    return np.asarray(np.mean(diff * diff, axis=1, dtype=np.float32))
