"""A version's prior p(z): N(0, I), the mixture of diagonal Gaussians in its prior file, and a flow on either.

A learned prior (a mixture of Gaussians, or a VampPrior: Tomczak & Welling 2018) is exported as the
mixture it is at export time, so the service needs no encoder to sample or score under it. model.json
without a `prior` object means N(0, I), the prior of every model exported before learned priors.
A normalizing flow on the prior (format 3, `prior_flow`) is two graphs over that base prior: the
numpy arithmetic stays here, the graphs run wherever the caller opened them.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from repository.errors import RepositoryError
from repository.manifest import FLOW_GRAPHS, Manifest
from repository.runtime import Graph
from repository.tensor_names import BASE_LATENTS, LATENTS, LOG_DET

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


BasePrior = StandardNormal | GaussianMixture


class RunsGraph(Protocol):
    """A graph session: repository.runtime.Graph in process, or one the service's executor holds."""

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True, eq=False)
class FlowPrior:
    """p(z) = p_base(f(z)) |det f'(z)|: a normalizing flow over a base prior (Dinh et al. 2017).

    density runs z -> (u = f(z), log|det f'(z)|), sampler u -> f^-1(u). A sample draws u from the base
    exactly as the base samples (temperature scales the base's spread, before the flow), then maps it.
    """

    base: BasePrior
    density: RunsGraph
    sampler: RunsGraph
    kind: ClassVar[str] = "flow"

    @property
    def latent_dim(self) -> int:
        return self.base.latent_dim

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        """log p(z) of latents [n, D], float64."""
        out = self.density.run({LATENTS: np.asarray(z, dtype=np.float32)}, (BASE_LATENTS, LOG_DET))
        return np.asarray(self.base.log_prob(out[BASE_LATENTS]) + out[LOG_DET].astype(np.float64))

    def latents(self, u: np.ndarray) -> np.ndarray:
        """f^-1(u) for base points u [n, D]: float32."""
        return self.sampler.run({BASE_LATENTS: u}, (LATENTS,))[LATENTS]

    def sample(self, rng: np.random.Generator, n: int, temperature: float) -> np.ndarray:
        """n draws [n, D] float32: the base's draws from rng, through the flow's inverse."""
        return self.latents(self.base.sample(rng, n, temperature))

    def analytic_kl(self, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray | None:
        """None: KL(q || flow) has no closed form; Score estimates it from its draws."""
        return None


Prior = StandardNormal | GaussianMixture | FlowPrior
# Opens a verified graph file (path, expected sha256): in process by default, the executor's in a service.
OpenGraph = Callable[[Path, str], RunsGraph]


def _open_in_process(path: Path, sha256: str) -> RunsGraph:
    return Graph(path)


def load_base_prior(version_dir: Path, manifest: Manifest) -> BasePrior:
    """The prior model.json's `prior` names (N(0, I) when it names none), without any flow on it."""
    if manifest.prior is None:
        return StandardNormal(manifest.latent_dim)
    return read_mixture(version_dir / manifest.prior.file, manifest.prior.components, manifest.latent_dim)


def load_prior(version_dir: Path, manifest: Manifest, open_graph: OpenGraph = _open_in_process) -> Prior:
    """The version's p(z), its flow's graphs opened by open_graph; raises PriorError if its file is wrong."""
    base = load_base_prior(version_dir, manifest)
    if manifest.prior_flow is None:
        return base
    graphs: Mapping[str, RunsGraph] = {
        role: open_graph(version_dir / entry.file, entry.sha256)
        for role, entry in ((g, manifest.prior_flow.graphs[g]) for g in FLOW_GRAPHS)
    }
    return FlowPrior(base, graphs["density"], graphs["sampler"])


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
