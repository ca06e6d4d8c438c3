"""The ELBO and the importance-weighted bound, in nats per image.

KL(q(z|x) || N(0, I)) is analytic for a diagonal Gaussian posterior (Kingma & Welling 2013, app. B);
under a learned prior it is not, and the ELBO takes the single-sample estimate log q(z|x) - log p(z).
The importance-weighted bound is Burda et al. 2015 (arXiv:1509.00519), with the model's own log p(z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from repository.prior import LOG_2PI
from training.model import VAE


def log_likelihood(model: VAE | Any, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) summed over pixels, one value per row; decoded is model.decode(z).

    model is anything with the VAE's `config` (and, for Gaussian models, `log_scale`).
    """
    dims = tuple(range(1, x.dim()))
    if model.config.likelihood == "bernoulli":
        # BCE with logits is the numerically stable form of log sigmoid / log(1 - sigmoid).
        return -F.binary_cross_entropy_with_logits(decoded, x, reduction="none").sum(dims)
    log_scale = model.log_scale.expand_as(decoded)
    log_density = -0.5 * ((x - decoded) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * LOG_2PI
    return log_density.sum(dims)


def float32(x: torch.Tensor) -> torch.autocast:
    """Densities and bounds in float32 even where the networks ran under autocast (train.precision)."""
    return torch.autocast(x.device.type, enabled=False)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension, shape of mu."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


@dataclass(frozen=True)
class LossTerms:
    loss: torch.Tensor  # what the optimizer minimises (warm-up, beta and free bits applied)
    nelbo: torch.Tensor  # mean negative bound per image, no weighting: the number to report
    recon: torch.Tensor  # mean -log p(x|z) per image
    kl: torch.Tensor  # mean KL per image


def elbo_loss(
    model: VAE,
    x: torch.Tensor,
    net: nn.Module | None = None,
    *,
    y: torch.Tensor | None = None,
    beta: float = 1.0,
    free_bits: float = 0.0,
    sum_over_batch: bool = False,
) -> LossTerms:
    """Single-sample ELBO with KL weight beta (warm-up passes beta < 1).

    Free bits keep at least that many nats per latent dimension out of the gradient (Kingma et
    al. 2016). net runs the forward pass: a DistributedDataParallel wrapper of model, or model.
    y: the labels of a conditional model. Under a learned prior or a flow the KL is the single-sample estimate
    log q(z|x) - log p(z) at the z that was decoded, and free bits (per analytic KL dimension) do not apply.
    """
    if free_bits > 0 and not model.config.analytic_kl:
        raise ValueError(
            f"free_bits needs the analytic KL of the normal prior and posterior; this model's prior is "
            f"{model.config.prior!r}, with {model.config.prior_flow_layers} flow layers (posterior: "
            f"{model.config.posterior_flow_layers}): set free_bits = 0"
        )
    decoded, mu, logvar, z, log_q = (net or model)(x, 1, y)
    with float32(x):
        recon = -log_likelihood(model, decoded, x)
        if not model.config.analytic_kl:
            kl = log_q[0] - model.log_prior(z[0])
            kl_for_loss = kl.sum()
        elif free_bits > 0:
            kl_dims = gaussian_kl(mu, logvar)
            kl = kl_dims.sum(1)
            kl_for_loss = torch.clamp(kl_dims.mean(0), min=free_bits).sum() * x.shape[0]
        else:
            kl = gaussian_kl(mu, logvar).sum(1)
            kl_for_loss = kl.sum()
        total = recon.sum() + beta * kl_for_loss
        loss = total if sum_over_batch else total / x.shape[0]
        return LossTerms(loss, (recon + kl).mean().detach(), recon.mean().detach(), kl.mean().detach())


def log_importance_weights(
    model: VAE, x: torch.Tensor, k: int, net: nn.Module | None = None, y: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x, z_i | y) - log q(z_i | x, y) for k posterior samples per image: shape (k, B)."""
    passed: tuple[torch.Tensor, ...] = (net or model)(x, k, y)
    decoded, _, _, z, log_q = passed
    x_rep = x.expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:])
    with float32(x):
        log_px_z = log_likelihood(model, decoded, x_rep).reshape(k, x.shape[0])
        return log_px_z + model.log_prior(z) - log_q


def iwae_loss(
    model: VAE, x: torch.Tensor, k: int, net: nn.Module | None = None, y: torch.Tensor | None = None
) -> LossTerms:
    """The importance-weighted bound with k samples, averaged over the batch."""
    log_w = log_importance_weights(model, x, k, net, y)  # float32
    bound = torch.logsumexp(log_w, 0) - math.log(k)
    loss = -bound.mean()
    zero = torch.zeros((), device=x.device)
    return LossTerms(loss, loss.detach(), zero, zero)
