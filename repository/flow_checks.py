"""`vae verify`'s checks of a prior flow's two graphs: each inverts the other, and log_det is the Jacobian's.

A density graph whose log_det is wrong gives every Score a wrong log p(z), and a sampler that is
not its inverse draws from some other distribution than the one Score measures; neither shows in
the graphs' shapes. Both are checked on random points of the base prior and of N(0, I), with the
Jacobian taken by central differences.
"""

from __future__ import annotations

import numpy as np

from repository.comparison import compare_outputs, probe_latents
from repository.prior import BasePrior, RunsGraph
from repository.tensor_names import BASE_LATENTS, LATENTS, LOG_DET

FLOW_CHECK_POINTS = 64
# Round trips in float32 through layers that scale by at most e each: 1e-4 of the point's scale.
INVERSE_TOLERANCE = 1e-4
# Central differences of float32 outputs: ~2e-5 per Jacobian entry at this step, ~1e-3 nats in the
# log-determinant of a 32-dimensional latent; a wrong log_det is off by whole nats.
JACOBIAN_STEP = 1e-2
LOG_DET_TOLERANCE = 1e-2
LOG_DET_POINTS = 4


def flow_problems(density: RunsGraph, sampler: RunsGraph, base: BasePrior) -> tuple[list[str], str]:
    """(problems, the figures found) for the flow's round trips and log-determinants."""
    dim = base.latent_dim
    base_points = base.sample(np.random.default_rng(0), FLOW_CHECK_POINTS, 1.0)
    z = np.concatenate([probe_latents(dim, FLOW_CHECK_POINTS), base_points])
    forward = density.run({LATENTS: z}, (BASE_LATENTS, LOG_DET))
    problems = []
    figures = []
    for what, start, back in (
        ("z -> u -> z", z, sampler.run({BASE_LATENTS: forward[BASE_LATENTS]}, (LATENTS,))[LATENTS]),
        (
            "u -> z -> u",
            base_points,
            _u(density, sampler.run({BASE_LATENTS: base_points}, (LATENTS,))[LATENTS]),
        ),
    ):
        (difference,) = compare_outputs({what: start}, {what: back}, INVERSE_TOLERANCE, scaled={what})
        figures.append(f"{what} within {difference.max_abs_diff:.1e}")
        if not difference.ok:
            problems.append(f"the flow does not invert: {what} {difference.describe('the start')}")
    worst = 0.0
    for point, log_det in zip(z[:LOG_DET_POINTS], forward[LOG_DET][:LOG_DET_POINTS], strict=True):
        from_jacobian = _log_abs_det(density, point)
        error = abs(float(log_det) - from_jacobian)
        if not np.isfinite(error) or error > LOG_DET_TOLERANCE:
            problems.append(
                f"{LOG_DET} is {float(log_det):.4f} at a probe point whose Jacobian has log|det| "
                f"{from_jacobian:.4f} (allowed {LOG_DET_TOLERANCE:g})"
            )
            break
        worst = max(worst, error)
    figures.append(f"{LOG_DET} within {worst:.1e} nats of the Jacobian's")
    return problems, ", ".join(figures)


def _u(density: RunsGraph, z: np.ndarray) -> np.ndarray:
    return density.run({LATENTS: z}, (BASE_LATENTS,))[BASE_LATENTS]


def _log_abs_det(density: RunsGraph, point: np.ndarray) -> float:
    """log|det du/dz| at one point by central differences, every column in one batch."""
    dim = len(point)
    steps = np.eye(dim, dtype=np.float32) * np.float32(JACOBIAN_STEP)
    u = _u(density, np.concatenate([point + steps, point - steps])).astype(np.float64)
    jacobian = (u[:dim] - u[dim:]).T / (2 * JACOBIAN_STEP)  # column i: du/dz_i
    return float(np.linalg.slogdet(jacobian).logabsdet)
