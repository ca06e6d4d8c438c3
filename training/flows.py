"""Normalizing flows on the latent: affine coupling layers (RealNVP, Dinh et al. 2017, arXiv:1605.08803).

A flow is an invertible map with a cheap log-determinant. Two uses (issue 31):
- a flow prior: u = f(z) maps a latent to the base prior's space (N(0, I) or the mixture), so
  log p(z) = log p_base(f(z)) + log|det df/dz|, and sampling draws u from the base and returns f^-1(u);
- a flow posterior: z = g(z0; c) moves a Gaussian draw z0 ~ N(mu, exp(logvar)) given the context
  c = (mu, logvar), so log q(z|x) = log N(z0; mu, exp(logvar)) - log|det dg/dz0| (Kingma et al.
  2016's IAF makes the same move with autoregressive layers; coupling layers invert in one pass).

Each layer keeps half of the coordinates and moves the other half by a scale and shift computed from
the kept half (and the context): layers alternate between even/odd and low/high halves so that
every coordinate is moved and conditions the others. Every layer starts as the identity (its last
linear layer is zero), so a flow added to a trained model starts exactly where the model was.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


def coupling_masks(dim: int, layers: int) -> list[torch.Tensor]:
    """Which coordinates each layer keeps (1.0) and moves (0.0): even, odd, low half, high half, ..."""
    index = torch.arange(dim)
    patterns = [index % 2 == 0, index % 2 == 1, index < dim // 2, index >= dim // 2]
    return [patterns[layer % len(patterns)].float() for layer in range(layers)]


class AffineCoupling(nn.Module):
    """x -> (x_kept, x_moved * exp(s) + t), s and t functions of x_kept and the context."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor, hidden: int, context_dim: int = 0) -> None:
        super().__init__()
        dim = mask.numel()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(
            nn.Linear(dim + context_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * dim),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _scale_shift(
        self, kept: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = kept if context is None else torch.cat([kept, context], dim=-1)
        log_scale, shift = self.net(inputs).chunk(2, dim=-1)
        moved = 1.0 - self.mask
        # tanh: a layer scales a coordinate by e at most, which keeps a deep flow well conditioned.
        return torch.tanh(log_scale) * moved, shift * moved

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det dy/dx|) for x (N, D)."""
        log_scale, shift = self._scale_shift(x * self.mask, context)
        return x * torch.exp(log_scale) + shift, log_scale.sum(-1)

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # The kept half passes unchanged, so y's kept half gives the same scale and shift.
        log_scale, shift = self._scale_shift(y * self.mask, context)
        return (y - shift) * torch.exp(-log_scale)


class CouplingFlow(nn.Module):
    """Affine coupling layers in sequence; forward returns the log-determinant of the whole map."""

    def __init__(self, dim: int, layers: int, hidden: int, context_dim: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            AffineCoupling(mask, hidden, context_dim) for mask in coupling_masks(dim, layers)
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det dy/dx|) for x (N, D): each row on its own."""
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self._couplings():
            x, layer_logdet = layer(x, context)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in reversed(self._couplings()):
            y = layer.inverse(y, context)
        return y

    def _couplings(self) -> list[AffineCoupling]:
        return [cast(AffineCoupling, layer) for layer in self.layers]
