"""The learned priors in PyTorch (training/priors.py) and the losses that use them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from training.config import ModelConfig, load_recipe
from training.evaluate import negative_elbo
from training.losses import elbo_loss, log_importance_weights
from training.model import VAE
from training.priors import log_normal, log_standard_normal

D, K = 4, 3
RECIPES = Path(__file__).parents[2] / "training" / "recipes"
TINY = {"architecture": "mlp", "image_shape": (1, 4, 4), "latent_dim": D, "widths": (8,)}


def _model(prior: str = "normal", components: int = 0) -> VAE:
    torch.manual_seed(0)  # the prior is built last: same seed, same encoder and decoder whatever the prior
    return VAE(ModelConfig(**TINY, prior=prior, prior_components=components))  # type: ignore[arg-type]


def test_the_normal_prior_adds_no_parameters() -> None:
    assert _model().prior is None
    assert set(_model("mixture", K).state_dict()) - set(_model().state_dict()) == {
        "prior.means",
        "prior.logvars",
        "prior.logits",
    }
    assert set(_model("vamp", K).state_dict()) - set(_model().state_dict()) == {"prior.pseudo_logits"}


@torch.no_grad()
def test_mixture_log_prob_is_the_brute_force_sum_over_components() -> None:
    model = _model("mixture", K)
    model.prior.logvars.normal_(0, 0.5)  # type: ignore[union-attr]
    model.prior.logits.normal_()  # type: ignore[union-attr]
    z = torch.randn(5, D, dtype=torch.float64)
    means = model.prior.means.double()  # type: ignore[union-attr]
    stds = torch.exp(0.5 * model.prior.logvars.double())  # type: ignore[union-attr]
    weights = torch.softmax(model.prior.logits.double(), 0)  # type: ignore[union-attr]
    expected = []
    for row in z:
        total = 0.0
        for k in range(K):
            density = 1.0
            for d in range(D):
                u = float((row[d] - means[k, d]) / stds[k, d])
                density *= math.exp(-0.5 * u * u) / (math.sqrt(2 * math.pi) * float(stds[k, d]))
            total += float(weights[k]) * density
        expected.append(math.log(total))
    got = model.double().log_prior(z)
    assert got.shape == (5,)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-10)


@torch.no_grad()
def test_vamp_prior_is_the_uniform_mixture_of_the_posteriors_at_its_pseudo_inputs() -> None:
    model = _model("vamp", K)
    pseudo = model.prior.pseudo_inputs()  # type: ignore[union-attr]
    assert pseudo.shape == (K, *TINY["image_shape"]) and 0 <= float(pseudo.min()) <= float(pseudo.max()) <= 1
    mu, logvar = model.encode(pseudo)
    z = torch.randn(6, D)
    per_component = torch.stack([log_normal(z, mu[k], logvar[k]) for k in range(K)], 1)
    expected = torch.logsumexp(per_component, 1) - math.log(K)
    torch.testing.assert_close(model.log_prior(z), expected)


@torch.no_grad()
def test_sample_prior_follows_the_mixture_weights() -> None:
    model = _model("mixture", K)
    model.prior.means.copy_(20 * torch.eye(K, D))  # type: ignore[union-attr]
    model.prior.logits.copy_(torch.log(torch.tensor([0.2, 0.3, 0.5])))  # type: ignore[union-attr]
    z = model.sample_prior(20000, torch.Generator().manual_seed(1))
    nearest = torch.cdist(z, model.prior.means).argmin(1)  # type: ignore[union-attr]
    shares = torch.bincount(nearest, minlength=K) / len(z)
    torch.testing.assert_close(shares, torch.tensor([0.2, 0.3, 0.5]), atol=0.02, rtol=0)


@torch.no_grad()
def test_importance_weights_use_the_models_log_prior() -> None:
    x = torch.rand(3, *TINY["image_shape"])
    normal, mixture = _model(), _model("mixture", K)
    torch.manual_seed(5)
    log_w_normal = log_importance_weights(normal, x, 7)
    torch.manual_seed(5)
    _, _, _, z, _ = mixture(x, 7)  # the same draws: the encoders are the same
    torch.manual_seed(5)
    log_w_mixture = log_importance_weights(mixture, x, 7)
    # Same decoder, same q: the weights differ by exactly log p_mixture(z) - log N(z; 0, I).
    torch.testing.assert_close(log_w_mixture - log_w_normal, mixture.log_prior(z) - log_standard_normal(z))


@torch.no_grad()
def test_elbo_under_a_learned_prior_estimates_the_kl_at_the_decoded_latent() -> None:
    model = _model("vamp", K)
    x = torch.rand(5, *TINY["image_shape"])
    torch.manual_seed(2)
    terms = elbo_loss(model, x)
    torch.manual_seed(2)
    _, mu, logvar, z, _ = model(x, 1)
    expected_kl = (log_normal(z[0], mu, logvar) - model.log_prior(z[0])).mean()
    torch.testing.assert_close(terms.kl, expected_kl)
    assert float(terms.nelbo) == pytest.approx(float(terms.recon + terms.kl), rel=1e-5)
    # The evaluation's -ELBO is the same estimator: over many draws the two agree on average.
    torch.manual_seed(3)
    many = x.repeat(400, 1, 1, 1)
    assert float(negative_elbo(model, many).mean()) == pytest.approx(
        float(elbo_loss(model, many).nelbo), rel=0.01
    )


def test_free_bits_are_refused_under_a_learned_prior() -> None:
    with pytest.raises(ValueError, match="free_bits needs the analytic KL"):
        elbo_loss(_model("mixture", K), torch.rand(2, *TINY["image_shape"]), free_bits=0.5)


def test_a_learned_prior_trains() -> None:
    model = _model("mixture", K)
    elbo_loss(model, torch.rand(4, *TINY["image_shape"])).loss.backward()
    for name in ("means", "logvars", "logits"):
        grad = getattr(model.prior, name).grad
        assert grad is not None and bool(grad.abs().sum() > 0), name


@pytest.mark.parametrize(("name", "prior"), [("mixture", "mixture"), ("vamp", "vamp")])
def test_the_prior_recipes_are_version_1s_network_with_a_learned_prior(name: str, prior: str) -> None:
    normal, recipe = load_recipe(RECIPES / "normal.toml"), load_recipe(RECIPES / f"{name}.toml")
    assert recipe.model.prior == prior and recipe.model.prior_components == 100
    assert dataclasses.replace(recipe.model, prior="normal", prior_components=0) == normal.model
    assert recipe.train == normal.train


def test_the_default_recipe_is_the_vamp_recipe_trained_longer_with_snapshots() -> None:
    default, vamp = load_recipe(RECIPES / "default.toml"), load_recipe(RECIPES / "vamp.toml")
    assert default.model == vamp.model
    assert default.train == dataclasses.replace(vamp.train, epochs=60, snapshot_every=10)


def test_the_fine_tune_recipe_continues_the_default_run_as_a_mixture_on_the_iw_bound() -> None:
    default, tune = load_recipe(RECIPES / "default.toml"), load_recipe(RECIPES / "default-iwae.toml")
    # The network the default run trained, its VampPrior as the free mixture of as many components.
    assert tune.model == dataclasses.replace(default.model, prior="mixture")
    assert (tune.train.init, tune.train.objective, tune.train.iw_samples) == ("runs/default", "iwae", 8)
    assert tune.train.lr < default.train.lr


def test_the_flow_continuation_recipe_is_the_flow_run_on_a_tighter_bound_at_a_lower_rate() -> None:
    flow, more = load_recipe(RECIPES / "default-flow.toml"), load_recipe(RECIPES / "default-flow-k32.toml")
    assert more.model == flow.model
    assert more.train == dataclasses.replace(
        flow.train,
        init="runs/default-flow/epoch-028.pt",  # models/mnist-flow/1
        iw_samples=32,
        lr=1e-4,
        epochs=14,
        snapshot_every=1,
    )


def test_the_train_and_validation_recipe_continues_the_k32_run_on_60000_images_in_bfloat16() -> None:
    more = load_recipe(RECIPES / "default-flow-k32.toml")
    trainval = load_recipe(RECIPES / "default-flow-trainval.toml")
    assert trainval.model == more.model
    assert trainval.train == dataclasses.replace(
        more.train,
        init="runs/default-flow-k32/best.pt",  # models/mnist-flow/2
        train_on="train+val",
        precision="bfloat16",
        epochs=12,
    )
