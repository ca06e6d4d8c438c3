"""The VAE: encode(x) -> (mu, logvar), reparameterize, decode(z); export splits it into two graphs.

Kingma & Welling 2013 (arXiv:1312.6114). The conv variant keeps the convolutions at half and quarter
resolution, with a pre-activation residual block (He et al. 2016) and a dense bottleneck, because
decoder FLOPs set the cost of a k=5000 importance-weighted evaluation; the MLP variant is the
pytorch/examples model.

A conditional VAE (Sohn et al. 2015) takes a class label in both halves, q(z|x, y) and p(x|z, y): a
learned embedding of the label is added to the first dense layer's output on each side, which is a
one-hot input to that layer without the one-hot.

The prior is N(0, I) unless the config asks for a learned one (training/priors.py); the normal prior
has no parameters, so such a model's state_dict is what it always was. Normalizing flows
(training/flows.py) may refine the prior and the posterior.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from training.config import ModelConfig
from training.flows import CouplingFlow
from training.priors import Components, MixturePrior, VampPrior, log_normal, log_prior, sample_mixture


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual: torch.Tensor = self.body(x)
        return x + residual


def _conv_encoder(config: ModelConfig) -> nn.Sequential:
    channels, height, width = config.image_shape
    w_half, w_quarter, hidden = config.widths
    return nn.Sequential(
        nn.Conv2d(channels, w_half, 4, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(w_half, w_quarter, 4, stride=2, padding=1),
        ResidualBlock(w_quarter),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(w_quarter * (height // 4) * (width // 4), hidden),
        nn.SiLU(),
        nn.Linear(hidden, 2 * config.latent_dim),
    )


def _conv_decoder(config: ModelConfig) -> nn.Sequential:
    channels, height, width = config.image_shape
    w_half, w_quarter, hidden = config.widths
    return nn.Sequential(
        nn.Linear(config.latent_dim, hidden),
        nn.SiLU(),
        nn.Linear(hidden, w_quarter * (height // 4) * (width // 4)),
        nn.Unflatten(1, (w_quarter, height // 4, width // 4)),
        nn.SiLU(),
        nn.ConvTranspose2d(w_quarter, w_half, 4, stride=2, padding=1),
        nn.SiLU(),
        # Sub-pixel convolution (Shi et al. 2016): a transposed conv with one output channel
        # is several times slower on CPU for the same receptive field.
        nn.Conv2d(w_half, 4 * channels, 3, padding=1),
        nn.PixelShuffle(2),
    )


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# The conv encoder's dense layer to the hidden width, counted from its end: where the label joins.
_ENCODER_DENSE = -3


class VAE(nn.Module):
    """Gaussian posterior, N(0, I) or a learned prior, Bernoulli or Gaussian likelihood; maybe conditional."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        pixels = math.prod(config.image_shape)
        if config.architecture == "conv":
            self.encoder = _conv_encoder(config)
            self.decoder = _conv_decoder(config)
        else:
            hidden = list(config.widths)
            self.encoder = nn.Sequential(nn.Flatten(), _mlp([pixels, *hidden, 2 * config.latent_dim]))
            self.decoder = nn.Sequential(
                _mlp([config.latent_dim, *reversed(hidden), pixels]), nn.Unflatten(1, config.image_shape)
            )
        if config.likelihood == "gaussian":
            log_scale = torch.full(config.image_shape, config.gaussian_log_scale)
            if config.gaussian_learned_scale:
                self.log_scale = nn.Parameter(log_scale)
            else:
                self.register_buffer("log_scale", log_scale)
        if config.conditional:
            self.encoder_label = nn.Embedding(len(config.classes), config.widths[-1])
            self.decoder_label = nn.Embedding(len(config.classes), config.widths[-1])
        self.prior: MixturePrior | VampPrior | None = None
        if config.prior == "mixture":
            self.prior = MixturePrior(config.prior_components, config.latent_dim)
        elif config.prior == "vamp":
            self.prior = VampPrior(config.prior_components, config.image_shape)
        dim = config.latent_dim
        self.prior_flow: CouplingFlow | None = None
        if config.prior_flow_layers:
            self.prior_flow = CouplingFlow(dim, config.prior_flow_layers, config.flow_hidden)
        self.posterior_flow: CouplingFlow | None = None
        if config.posterior_flow_layers:
            # Its context is the Gaussian's (mu, logvar): the encoder stays as it is.
            self.posterior_flow = CouplingFlow(dim, config.posterior_flow_layers, config.flow_hidden, 2 * dim)

    def _check_labels(self, y: torch.Tensor | None) -> None:
        if self.config.conditional and y is None:
            raise ValueError(f"this model is conditional on {len(self.config.classes)} classes; pass labels")
        if not self.config.conditional and y is not None:
            raise ValueError("this model is unconditional; it takes no labels")

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [0, 1], (B, C, H, W), and labels (B,) if conditional -> posterior mean and log-variance."""
        self._check_labels(y)
        if y is None:
            out = self.encoder(x)
        else:
            hidden = self.encoder[_ENCODER_DENSE](self.encoder[:_ENCODER_DENSE](x)) + self.encoder_label(y)
            out = self.encoder[_ENCODER_DENSE + 1 :](hidden)
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli: logits. Gaussian: the mean, squashed into [0, 1]. Labels (B,) if conditional."""
        self._check_labels(y)
        out = self.decoder(z) if y is None else self.decoder[1:](self.decoder[0](z) + self.decoder_label(y))
        return torch.sigmoid(out) if self.config.likelihood == "gaussian" else out

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel means in [0, 1] for either likelihood: what pictures and the service show."""
        out = self.decode(z, y)
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out

    def prior_components(self) -> Components | None:
        """A learned prior as a mixture (means, logvars, log_weights); None for N(0, I)."""
        return None if self.prior is None else self.prior.components(self.encode)

    def log_base_prior(self, u: torch.Tensor) -> torch.Tensor:
        """log p_base(u) summed over the last dimension: the prior below any prior flow (prior.npz's)."""
        return log_prior(u, self.prior_components())

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over the last dimension."""
        if self.prior_flow is None:
            return self.log_base_prior(z)
        flowed: tuple[torch.Tensor, torch.Tensor] = self.prior_flow(z.reshape(-1, z.shape[-1]))
        u, logdet = flowed
        return self.log_base_prior(u).reshape(z.shape[:-1]) + logdet.reshape(z.shape[:-1])

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latents (n, D) drawn from the prior."""
        components = self.prior_components()
        if components is None:
            u = torch.randn((n, self.config.latent_dim), generator=generator)
        else:
            u = sample_mixture(components, n, generator)
        return self.prior_point(u)

    def prior_point(self, u: torch.Tensor) -> torch.Tensor:
        """The latent at a point u (n, D) of the base prior: u itself, or through the prior flow's inverse."""
        if self.prior_flow is None:
            return u
        weights = next(self.prior_flow.parameters())
        return self.prior_flow.inverse(u.to(weights.device, weights.dtype))

    def posterior_point(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The posterior's central latent (B, D): mu, or mu through the posterior flow (pictures show it)."""
        if self.posterior_flow is None:
            return mu
        moved: tuple[torch.Tensor, torch.Tensor] = self.posterior_flow(mu, torch.cat([mu, logvar], dim=-1))
        return moved[0]

    def draw_posterior(
        self, mu: torch.Tensor, logvar: torch.Tensor, samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`samples` latents per image (samples, B, D) from q(z|x), and their log q(z|x) (samples, B)."""
        z0, log_q = gaussian_draws(mu, logvar, samples)
        if self.posterior_flow is None:
            return z0, log_q
        context = torch.cat([mu, logvar], dim=-1).expand(samples, -1, -1).reshape(-1, 2 * mu.shape[-1])
        flowed: tuple[torch.Tensor, torch.Tensor] = self.posterior_flow(z0.reshape(-1, mu.shape[-1]), context)
        z, logdet = flowed
        return z.reshape(z0.shape), log_q - logdet.reshape(log_q.shape)

    def forward(
        self, x: torch.Tensor, samples: int = 1, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, draw `samples` latents per image, decode them all (with the labels y, if conditional).

        Returns decoded (samples * B, ...), mu and logvar (B, D), z (samples, B, D) and log q(z|x)
        (samples, B). Training goes through forward so that DistributedDataParallel sees every pass.
        """
        mu, logvar = self.encode(x, y)
        mu, logvar = mu.float(), logvar.float()  # the networks may run under autocast; never the draws
        with torch.autocast(x.device.type, enabled=False):
            z, log_q = self.draw_posterior(mu, logvar, samples)
        decoded = self.decode(z.reshape(-1, mu.shape[1]), repeat_labels(y, samples))
        return decoded.float(), mu, logvar, z, log_q


def gaussian_draws(mu: torch.Tensor, logvar: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples` draws per row of N(mu, exp(logvar)) (samples, B, D), and their log-densities (samples, B)."""
    z = VAE.reparameterize(mu.expand(samples, *mu.shape), logvar.expand(samples, *logvar.shape))
    return z, log_normal(z, mu, logvar)


def repeat_labels(y: torch.Tensor | None, samples: int) -> torch.Tensor | None:
    """Labels for latents laid out sample-major, (samples * B,), as forward and the IW bound draw them."""
    return None if y is None else y.repeat(samples)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
