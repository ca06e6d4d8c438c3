"""Priors p(z) in PyTorch: N(0, I), a learned mixture of Gaussians, and the VampPrior.

Both learned priors are mixtures of diagonal Gaussians given by `components(encode)` -> (means [K, D],
logvars [K, D], log_weights [K]): the mixture's own parameters, or for the VampPrior (Tomczak &
Welling 2018, arXiv:1705.07120) the posteriors q(z|u_k) at K learned pseudo-inputs u_k with uniform
weights. That is also what export writes (prior.npz), so the service never needs the encoder for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from repository.prior import LOG_2PI

Components = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return (-0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (LOG_2PI + z.pow(2))).sum(-1)


def log_mixture(z: torch.Tensor, components: Components) -> torch.Tensor:
    """log sum_k w_k N(z; means_k, exp(logvars_k)) for z (..., D): shape (...).

    The squared distances sum_d (z_d - m_kd)^2 / v_kd are expanded into matrix products, with no
    (..., K, D) temporary: a k = 5000 evaluation spent a quarter of its time building that one. In
    float64, so that the expansion's cancellation stays far below float32's resolution.
    """
    means, logvars, log_weights = (c.double() for c in components)
    z64 = z.double()
    precisions = torch.exp(-logvars)  # [K, D]
    squared = (
        (z64 * z64) @ precisions.T - 2.0 * z64 @ (means * precisions).T + (means * means * precisions).sum(-1)
    )
    per_component = -0.5 * (means.shape[-1] * LOG_2PI + logvars.sum(-1) + squared)
    return torch.logsumexp(log_weights + per_component, dim=-1).to(z.dtype)


def log_prior(z: torch.Tensor, components: Components | None) -> torch.Tensor:
    """log p(z) over the last dimension: N(0, I) when components is None, else the mixture."""
    return log_standard_normal(z) if components is None else log_mixture(z, components)


def sample_mixture(components: Components, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws (n, D): a component by its weight, then its mean plus its std times a normal draw."""
    means, logvars, log_weights = components
    picked = torch.multinomial(log_weights.exp(), n, replacement=True, generator=generator)
    eps = torch.randn((n, means.shape[1]), generator=generator, device=means.device, dtype=means.dtype)
    return means[picked] + torch.exp(0.5 * logvars[picked]) * eps


def mixture_state(components: Components) -> dict[str, torch.Tensor]:
    """A mixture's (means, logvars, log_weights) as a VAE's MixturePrior state_dict entries."""
    means, logvars, log_weights = components
    return {"prior.means": means, "prior.logvars": logvars, "prior.logits": log_weights}


class MixturePrior(nn.Module):
    """K Gaussians with learned means, log-variances and mixture logits."""

    def __init__(self, components: int, latent_dim: int) -> None:
        super().__init__()
        # Means spread like draws from N(0, I) so that the components start apart; unit variances.
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def components(self, encode: Encode) -> Components:
        return self.means, self.logvars, torch.log_softmax(self.logits, dim=0)


class VampPrior(nn.Module):
    """A uniform mixture of the encoder's posteriors q(z|u_k) at K learned pseudo-inputs u_k in [0, 1]."""

    def __init__(self, components: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        # Free parameters behind a sigmoid keep the pseudo-inputs valid images while they learn.
        self.pseudo_logits = nn.Parameter(torch.randn(components, *image_shape))

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.pseudo_logits)

    def components(self, encode: Encode) -> Components:
        means, logvars = encode(self.pseudo_inputs())
        k = means.shape[0]
        return means, logvars, torch.full((k,), -math.log(k), device=means.device, dtype=means.dtype)
