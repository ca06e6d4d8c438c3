"""The VAE's shapes, its config checks, the analytic KL and the importance-weighted estimator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.config import ModelConfig
from training.evaluate import importance_weighted_nll
from training.losses import elbo_loss, gaussian_kl, iwae_loss
from training.model import VAE
from training.priors import log_normal


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(architecture="mlp", widths=(64, 32), latent_dim=2),
        ModelConfig(image_shape=(3, 16, 12), widths=(8, 16, 32), likelihood="gaussian"),
        ModelConfig(architecture="mlp", widths=(16,), likelihood="gaussian", gaussian_learned_scale=False),
    ],
)
@torch.no_grad()
def test_shapes_and_dtypes(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = VAE(config)
    x = torch.rand(5, *config.image_shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, config.latent_dim)
    z = model.reparameterize(mu, logvar)
    decoded = model.decode(z)
    assert decoded.shape == x.shape and decoded.dtype == torch.float32
    means = model.decode_mean(z)
    assert float(means.min()) >= 0.0 and float(means.max()) <= 1.0
    out, mu2, _, z2, _ = model(x, samples=3)
    assert out.shape == (15, *config.image_shape) and z2.shape == (3, 5, config.latent_dim)
    assert torch.equal(mu, mu2)
    terms = elbo_loss(model, x)
    assert torch.isfinite(terms.loss) and float(terms.kl) >= 0
    assert float(terms.nelbo) == pytest.approx(float(terms.recon + terms.kl), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latent_dim": 1}, "latent_dim"),
        ({"latent_dim": 129}, "latent_dim"),
        ({"image_shape": (1, 30, 28)}, "divisible by 4"),
        ({"architecture": "rnn"}, "architecture"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"widths": (8, 16)}, "3 widths"),
        ({"classes": ("a",)}, "two or more"),
        ({"classes": ("a", "a")}, "distinct"),
        ({"classes": ("a", "b"), "architecture": "mlp", "widths": (8,)}, "conditional"),
        ({"prior": "gamma"}, "prior must be"),
        ({"prior": "mixture"}, "prior_components >= 1"),
        ({"prior": "vamp", "prior_components": -1}, "prior_components >= 1"),
        ({"prior_components": 3}, "normal prior has none"),
        ({"prior": "vamp", "prior_components": 2, "classes": ("a", "b")}, "unconditional"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


@torch.no_grad()
def test_conditional_model_uses_its_labels_in_both_halves() -> None:
    torch.manual_seed(0)
    model = VAE(ModelConfig(widths=(8, 16, 32), latent_dim=4, classes=("a", "b", "c"))).eval()
    x, z = torch.rand(2, 1, 28, 28), torch.randn(2, 4)
    ones, twos = torch.tensor([1, 1]), torch.tensor([2, 2])
    assert not torch.allclose(model.encode(x, ones)[0], model.encode(x, twos)[0])
    assert not torch.allclose(model.decode(z, ones), model.decode(z, twos))
    # Each item follows its own label: a mixed batch decodes as its items decoded alone.
    mixed = model.decode(z, torch.tensor([1, 2]))
    assert torch.allclose(mixed[0], model.decode(z[:1], ones[:1])[0], atol=1e-6)
    assert torch.allclose(mixed[1], model.decode(z[1:], twos[:1])[0], atol=1e-6)
    # forward lays k samples out sample-major; each row must be decoded under its image's label.
    torch.manual_seed(1)
    decoded, _, _, latents, _ = model(x, 3, torch.tensor([0, 2]))
    expected = model.decode(latents.reshape(6, 4), torch.tensor([0, 2, 0, 2, 0, 2]))
    assert torch.allclose(decoded, expected, atol=1e-6)
    assert torch.isfinite(elbo_loss(model, x, y=ones).loss) and torch.isfinite(
        iwae_loss(model, x, 4, y=ones).loss
    )
    with pytest.raises(ValueError, match="pass labels"):
        model.decode(z)
    with pytest.raises(ValueError, match="unconditional"):
        VAE(ModelConfig(widths=(8, 16, 32), latent_dim=4)).decode(z, ones)


def test_analytic_kl_matches_monte_carlo() -> None:
    generator = torch.Generator().manual_seed(1)
    mu = torch.randn(4, 3, generator=generator)
    logvar = torch.randn(4, 3, generator=generator) * 0.5
    analytic = gaussian_kl(mu, logvar).sum(1)
    z = mu + torch.randn(200_000, 4, 3, generator=generator) * torch.exp(0.5 * logvar)
    log_q = log_normal(z, mu, logvar)
    log_p = log_normal(z, torch.zeros_like(mu), torch.zeros_like(logvar))
    monte_carlo = (log_q - log_p).mean(0)
    torch.testing.assert_close(monte_carlo, analytic, atol=0.02, rtol=0.01)


class LinearGaussianVAE(VAE):
    """Probabilistic PCA: p(x|z) = N(Wz + b, s^2 I), so log p(x) = log N(x; b, WW^T + s^2 I)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, log_scale: float) -> None:
        pixels, latent = weight.shape
        super().__init__(
            ModelConfig(
                architecture="mlp",
                image_shape=(1, 1, pixels),
                latent_dim=latent,
                widths=(4,),
                likelihood="gaussian",
                gaussian_learned_scale=False,
                gaussian_log_scale=log_scale,
            )
        )
        self.weight, self.bias, self.variance = weight, bias, math.exp(2 * log_scale)
        self.decoder = nn.Sequential(nn.Linear(latent, pixels), nn.Unflatten(1, (1, 1, pixels)))
        with torch.no_grad():
            self.decoder[0].weight.copy_(weight)
            self.decoder[0].bias.copy_(bias)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z)  # linear mean, no squashing: the closed form needs it

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # The exact posterior's mean with a deliberately too-wide diagonal variance, so that
        # small k is visibly biased and only large k closes the gap.
        w = self.weight
        precision = w.T @ w / self.variance + torch.eye(w.shape[1])
        covariance = torch.linalg.inv(precision)
        mean = (x.flatten(1) - self.bias) @ w @ covariance.T / self.variance
        logvar = torch.log(torch.diagonal(covariance) * 2.5).expand_as(mean)
        return mean, logvar


def test_importance_weighted_estimate_converges_to_exact_marginal() -> None:
    torch.manual_seed(3)
    pixels, latent, log_scale = 6, 3, math.log(0.5)
    model = LinearGaussianVAE(torch.randn(pixels, latent), torch.randn(pixels) * 0.1, log_scale)
    x = torch.randn(8, 1, 1, pixels) * 1.5
    marginal = torch.distributions.MultivariateNormal(
        model.bias, model.weight @ model.weight.T + model.variance * torch.eye(pixels)
    )
    exact_nll = -marginal.log_prob(x.flatten(1))
    repeats = 400
    with torch.no_grad():
        # k=1 is the ELBO: on average an upper bound on the NLL, with a visible gap.
        single = importance_weighted_nll(model, x.repeat(repeats, 1, 1, 1), 1).reshape(repeats, -1).mean(0)
        many = importance_weighted_nll(model, x, 20000, 4000)
        bound = iwae_loss(model, x.repeat(repeats, 1, 1, 1), 1).nelbo
    gap_k1 = float((single - exact_nll).mean())
    error_large_k = float((many - exact_nll).abs().max())
    assert gap_k1 > 0.2, gap_k1
    assert error_large_k < 0.05, error_large_k
    assert gap_k1 > 10 * error_large_k  # the gap really closes as k grows
    assert float(bound) == pytest.approx(float(single.mean()), abs=0.3)  # training's bound agrees
