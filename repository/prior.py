"""A version's prior p(z) in numpy: N(0, I), or the mixture of diagonal Gaussians in its prior file.

A learned prior (a mixture of Gaussians, or a VampPrior: Tomczak & Welling 2018) is exported as the
mixture it is at export time, so the service needs no encoder to sample or score under it. model.json
without a `prior` object means N(0, I), the prior of every model exported before learned priors.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from repository.errors import RepositoryError
from repository.manifest import Manifest

LOG_2PI = math.log(2.0 * math.pi)
PRIOR_FILE = "prior.npz"
PRIOR_ARRAYS = ("means", "logvars", "log_weights")
# log_weights are stored in float32; their log-sum-exp is 0 to within float32 rounding of K terms.
WEIGHTS_TOLERANCE = 1e-5


class PriorError(RepositoryError):
    """A version's prior file is missing, pickled, mis-shaped, not finite, or its weights do not sum to 1."""


@dataclass(frozen=True)
class StandardNormal:
    """N(0, I): temperature T samples N(0, T^2 I)."""

    latent_dim: int
    kind: ClassVar[str] = "normal"

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        """log p(z) summed over the last axis, float64."""
        z = z.astype(np.float64, copy=False)
        return np.asarray(-0.5 * np.sum(LOG_2PI + z * z, axis=-1))

    def sample(self, rng: np.random.Generator, n: int, temperature: float) -> np.ndarray:
        """n draws [n, D] float32: exactly `temperature * rng.standard_normal((n, D), dtype=float32)`."""
        z = rng.standard_normal((n, self.latent_dim), dtype=np.float32)
        if temperature != 1.0:
            z *= np.float32(temperature)
        return z

    def analytic_kl(self, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray | None:
        """KL(N(mu, exp(logvar)) || N(0, I)) per row (Kingma & Welling 2013, app. B): float64."""
        m, lv = mu.astype(np.float64), logvar.astype(np.float64)
        return np.asarray(0.5 * np.sum(m * m + np.exp(lv) - 1.0 - lv, axis=1))


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """sum_k w_k N(means_k, diag(exp(logvars_k))); temperature scales each std, never the weights."""

    means: np.ndarray  # [K, D] float32
    logvars: np.ndarray  # [K, D] float32
    log_weights: np.ndarray  # [K] float32, log-sum-exp 0
    kind: ClassVar[str] = "mixture"

    @property
    def latent_dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def components(self) -> int:
        return int(self.means.shape[0])

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        """log p(z) over the last axis, float64: a log-sum-exp over the components."""
        z = z.astype(np.float64, copy=False)[..., None, :]  # [..., 1, D] against [K, D]
        means, logvars = self.means.astype(np.float64), self.logvars.astype(np.float64)
        per_component = -0.5 * np.sum(LOG_2PI + logvars + (z - means) ** 2 * np.exp(-logvars), axis=-1)
        per_component += self.log_weights.astype(np.float64)
        top = per_component.max(axis=-1, keepdims=True)
        return np.asarray(top[..., 0] + np.log(np.sum(np.exp(per_component - top), axis=-1)))

    def sample(self, rng: np.random.Generator, n: int, temperature: float) -> np.ndarray:
        """n draws [n, D] float32: a component by its weight, then mean + temperature * std * eps.

        Each row takes D + 2 standard normals from rng: eps, and two whose angle, uniform on the
        circle, picks the component. Rows never share draws, so drawing n rows in chunks from one
        generator gives the same latents as drawing them at once (SampleStream and Sample agree).
        """
        normals = rng.standard_normal((n, self.latent_dim + 2), dtype=np.float32)
        eps, pair = normals[:, :-2], normals[:, -2:].astype(np.float64)
        uniform = (np.arctan2(pair[:, 0], pair[:, 1]) + math.pi) / (2.0 * math.pi)
        cumulative = np.cumsum(np.exp(self.log_weights.astype(np.float64)))
        component = np.minimum(np.searchsorted(cumulative, uniform, side="right"), self.components - 1)
        std = np.exp(np.float32(0.5) * self.logvars[component])
        return np.asarray(self.means[component] + np.float32(temperature) * std * eps, dtype=np.float32)

    def analytic_kl(self, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray | None:
        """None: KL(q || mixture) has no closed form; Score estimates it from its draws."""
        return None


Prior = StandardNormal | GaussianMixture


def load_prior(version_dir: Path, manifest: Manifest) -> Prior:
    """The prior model.json names (N(0, I) when it names none); raises PriorError if its file is wrong."""
    if manifest.prior is None:
        return StandardNormal(manifest.latent_dim)
    return read_mixture(version_dir / manifest.prior.file, manifest.prior.components, manifest.latent_dim)


def read_mixture(path: Path, components: int, latent_dim: int) -> GaussianMixture:
    """A prior file that must hold `components` Gaussians of latent_dim dimensions; raises PriorError."""
    try:
        # allow_pickle=False: an object array (a pickle) is refused, never run.
        with np.load(path, allow_pickle=False) as data:
            found = sorted(data.files)
            if found != sorted(PRIOR_ARRAYS):
                raise PriorError(f"{path.name} holds arrays {found}; expected {sorted(PRIOR_ARRAYS)}")
            arrays = {name: data[name] for name in PRIOR_ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise PriorError(f"{path.name} does not load as an .npz of plain arrays: {exc}") from exc
    shapes = {
        "means": (components, latent_dim),
        "logvars": (components, latent_dim),
        "log_weights": (components,),
    }
    for name, shape in shapes.items():
        array = arrays[name]
        if array.shape != shape or array.dtype != np.float32:
            raise PriorError(
                f"{path.name}: {name} is {array.dtype} {list(array.shape)}; model.json's "
                f"{components} components and latent_dim {latent_dim} need float32 {list(shape)}"
            )
        if not np.isfinite(array).all():
            raise PriorError(f"{path.name}: {name} has NaN or Inf values")
    log_weights = arrays["log_weights"].astype(np.float64)
    total = float(log_weights.max() + np.log(np.sum(np.exp(log_weights - log_weights.max()))))
    if abs(total) > WEIGHTS_TOLERANCE:
        raise PriorError(f"{path.name}: the mixture weights sum to {math.exp(total):.8g}, not 1")
    return GaussianMixture(arrays["means"], arrays["logvars"], arrays["log_weights"])


def save_prior(path: Path, means: np.ndarray, logvars: np.ndarray, log_weights: np.ndarray) -> None:
    """Write a mixture as load_prior reads it: three float32 arrays in an uncompressed .npz."""
    with open(path, "wb") as handle:
        np.savez(
            handle,
            means=np.asarray(means, dtype=np.float32),
            logvars=np.asarray(logvars, dtype=np.float32),
            log_weights=np.asarray(log_weights, dtype=np.float32),
        )
