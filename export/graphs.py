"""The two exported graphs: the VAE split at the latent, as small modules torch.onnx can trace."""

from __future__ import annotations

import torch
from torch import nn

from training.model import VAE

# torch.onnx names a graph's weights by their path in the traced module: the VAE's state_dict keys
# under the `vae` attribute both graphs keep it in (`vae recover` reads them back).
WEIGHTS_PREFIX = "vae."


class EncoderGraph(nn.Module):
    """x float32 [batch, C, H, W] in [0, 1], and y int64 [batch] if conditional -> (mu, logvar) [batch, D]."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x, y)


class DecoderGraph(nn.Module):
    """z float32 [batch, D], and y int64 [batch] if conditional -> probs [batch, C, H, W] in [0, 1].

    Bernoulli models also output the logits.
    """

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(
        self, z: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.vae.config.likelihood == "bernoulli":
            # VAE.decode_mean is sigmoid(decode(z)); calling both would run the decoder twice in the
            # graph. Export's parity check compares probs with decode_mean itself.
            logits = self.vae.decode(z, y)
            return torch.sigmoid(logits), logits
        return self.vae.decode_mean(z, y)
