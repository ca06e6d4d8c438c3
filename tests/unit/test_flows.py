"""Normalizing flows (training/flows.py) in the VAE: invertible, exact log-determinants, a normalized prior,
the identity at the start, and a run without flows as the start of one with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from export.errors import ExportError
from export.onnx_export import export_run
from training import checkpoint as ckpt
from training.config import ModelConfig, TrainConfig
from training.flows import CouplingFlow, coupling_masks
from training.losses import elbo_loss, iwae_loss, log_importance_weights
from training.model import VAE

D = 4
TINY = {"architecture": "mlp", "image_shape": (1, 4, 4), "latent_dim": D, "widths": (8,)}


def _perturbed(flow: CouplingFlow, seed: int = 0, scale: float = 0.5) -> CouplingFlow:
    """A flow that is not the identity: every weight drawn anew."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return flow.double()


def _model(**flows: int) -> VAE:
    torch.manual_seed(0)
    return VAE(ModelConfig(**TINY, prior="mixture", prior_components=3, **flows))  # type: ignore[arg-type]


def test_every_coordinate_is_moved_by_some_layer_and_kept_by_another() -> None:
    masks = torch.stack(coupling_masks(6, 4))
    assert masks.max(0).values.min() == 1 and masks.min(0).values.max() == 0
    assert torch.equal(masks[0], torch.tensor([1.0, 0, 1, 0, 1, 0]))


@pytest.mark.parametrize("context_dim", [0, 3])
def test_a_flow_inverts_exactly_and_its_logdet_is_the_jacobians(context_dim: int) -> None:
    flow = _perturbed(CouplingFlow(D, 5, 16, context_dim))
    x = torch.randn(7, D, dtype=torch.float64)
    context = torch.randn(7, context_dim, dtype=torch.float64) if context_dim else None
    y, logdet = flow(x, context)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(flow.inverse(y, context), x, rtol=0, atol=1e-12)
    for row in range(3):
        row_context = None if context is None else context[row : row + 1]

        def one_row(v: torch.Tensor, c: torch.Tensor | None = row_context) -> torch.Tensor:
            out: torch.Tensor = flow(v[None], c)[0][0]
            return out

        jacobian = torch.autograd.functional.jacobian(one_row, x[row])
        torch.testing.assert_close(logdet[row], torch.linalg.slogdet(jacobian).logabsdet, rtol=0, atol=1e-10)


def test_a_new_flow_is_the_identity_so_adding_one_changes_nothing() -> None:
    plain, flowed = _model(), _model(prior_flow_layers=3, posterior_flow_layers=2)
    flowed.load_state_dict(plain.state_dict(), strict=False)
    z = torch.randn(2, 5, D)
    torch.testing.assert_close(flowed.log_prior(z), plain.log_prior(z))
    torch.manual_seed(1)
    x = torch.rand(5, 1, 4, 4).round()
    torch.manual_seed(2)
    expected = log_importance_weights(plain, x, 4)
    torch.manual_seed(2)
    torch.testing.assert_close(log_importance_weights(flowed, x, 4), expected)


@torch.no_grad()
def test_a_flow_prior_is_a_normalized_density_whose_samples_it_scores() -> None:
    torch.manual_seed(0)
    model = VAE(
        ModelConfig(
            architecture="mlp",
            image_shape=(1, 4, 4),
            latent_dim=2,
            widths=(8,),
            prior_flow_layers=4,
            flow_hidden=16,
        )
    )
    assert model.prior_flow is not None
    _perturbed(model.prior_flow, seed=3, scale=0.3).float()
    model = model.double()
    side = torch.linspace(-12, 12, 801, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side)
    cell = float(side[1] - side[0]) ** 2
    assert abs(float(model.log_prior(grid).exp().sum()) * cell - 1.0) < 2e-3
    # Samples go through the inverse: the density direction maps them back to the base draws.
    torch.manual_seed(5)
    z = model.sample_prior(1000)
    torch.manual_seed(5)
    u = torch.randn(1000, 2).double()
    torch.testing.assert_close(model.prior_flow(z)[0], u, rtol=0, atol=1e-9)


def test_both_losses_train_the_flows() -> None:
    model = _model(prior_flow_layers=2, posterior_flow_layers=2)
    x = torch.rand(6, 1, 4, 4).round()
    for loss in (elbo_loss(model, x).loss, iwae_loss(model, x, 3).loss):
        model.zero_grad()
        loss.backward()
        for flow in (model.prior_flow, model.posterior_flow):
            assert flow is not None
            # At the identity only the last layer's gradient is non-zero (the others are multiplied by it).
            assert any(float(p.grad.abs().sum()) > 0 for p in flow.parameters() if p.grad is not None)


@torch.no_grad()
def test_pictures_show_the_latents_through_the_flows() -> None:
    model = _model(prior_flow_layers=2, posterior_flow_layers=2)
    assert model.prior_flow is not None and model.posterior_flow is not None
    _perturbed(model.prior_flow, seed=1, scale=0.1).float()
    _perturbed(model.posterior_flow, seed=2, scale=0.1).float()
    u, mu, logvar = torch.randn(5, D), torch.randn(5, D), torch.randn(5, D)
    torch.testing.assert_close(model.prior_flow(model.prior_point(u))[0], u, rtol=0, atol=1e-5)
    moved = model.posterior_point(mu, logvar)
    assert not torch.allclose(moved, mu)
    torch.testing.assert_close(moved, model.posterior_flow(mu, torch.cat([mu, logvar], -1))[0])


def _save_run(run: Path, model: VAE) -> None:
    run.mkdir()
    ckpt.save(
        run / ckpt.LAST,
        ckpt.Checkpoint(
            model_config=model.config,
            train_config=TrainConfig(epochs=1),
            epoch=1,
            step=1,
            model_state=model.state_dict(),
            optimizer_state=None,
            best_val_nelbo=float("inf"),
            train_seconds=12.0,
        ),
    )


def test_a_run_without_flows_starts_one_with_them_and_not_the_other_way(tmp_path: Path) -> None:
    plain = _model()
    _save_run(tmp_path / "plain", plain)
    flowed = _model(prior_flow_layers=2, posterior_flow_layers=1)
    weights, seconds = ckpt.initial_weights(tmp_path / "plain", flowed.config, flowed.state_dict())
    assert seconds == 12.0
    flowed.load_state_dict(weights)  # strict: every flow weight is there
    z = torch.randn(3, D)
    torch.testing.assert_close(flowed.log_prior(z), plain.log_prior(z))

    _save_run(tmp_path / "flowed", flowed)
    for other in (
        dataclasses.replace(flowed.config, prior_flow_layers=4),  # a trained flow cannot change shape
        dataclasses.replace(flowed.config, flow_hidden=64),
        dataclasses.replace(flowed.config, posterior_flow_layers=0),
    ):
        with pytest.raises(ValueError, match="from one without a flow when it adds it"):
            ckpt.initial_weights(tmp_path / "flowed", other, VAE(other).state_dict())

    # One flow at a time: a run with a prior flow starts one that adds a posterior flow.
    prior_only = _model(prior_flow_layers=2)
    _save_run(tmp_path / "prior-only", prior_only)
    both = _model(prior_flow_layers=2, posterior_flow_layers=3)
    weights, _ = ckpt.initial_weights(tmp_path / "prior-only", both.config, both.state_dict())
    both.load_state_dict(weights)
    torch.testing.assert_close(
        both.state_dict()["prior_flow.layers.0.net.0.weight"],
        prior_only.state_dict()["prior_flow.layers.0.net.0.weight"],
    )
    # A posterior flow is not served: Encode's mean and log-variance would not describe the posterior.
    with pytest.raises(
        ExportError, match=r"posterior flow \(1 layers\), which the serving contract does not carry"
    ):
        export_run(tmp_path / "flowed", tmp_path / "repo", "flowed")
    assert not (tmp_path / "repo" / "flowed" / "1").exists()
