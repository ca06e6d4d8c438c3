"""Score's arithmetic (repository/scoring.py) against training/losses.py and against itself, chunked."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from repository.manifest import Manifest, v1_specs
from repository.prior import GaussianMixture, Prior, StandardNormal
from repository.scoring import Likelihood, Scorer, ScoringUnsupported, likelihood_of
from repository.tensor_names import LOGITS, PROBS
from training.losses import log_likelihood

RNG = np.random.default_rng(0)
D, IMAGE = 3, (1, 4, 4)
STANDARD = StandardNormal(D)


def _manifest(likelihood: str, learned_scale: bool) -> Manifest:
    return Manifest(
        name="toy",
        version=1,
        created="2025-01-02T03:04:05Z",
        **v1_specs(D, IMAGE, likelihood),
        opset=18,
        pairing_id="0" * 32,
        graphs={},  # not read by likelihood_of
        fp16=None,
        parity_max_abs_diff={},
        parity_batch_sizes=(1,),
        eval=None,
        training={"model": {"gaussian_learned_scale": learned_scale, "gaussian_log_scale": -1.5}},
    )


def test_bernoulli_log_prob_is_minus_bce_with_logits_even_for_saturated_logits() -> None:
    logits = RNG.normal(0, 40, (5, *IMAGE)).astype(np.float32)
    x = (RNG.random((5, *IMAGE)) < 0.5).astype(np.float32)
    expected = -F.binary_cross_entropy_with_logits(
        torch.from_numpy(logits).double(), torch.from_numpy(x).double(), reduction="none"
    ).sum((1, 2, 3))
    got = Likelihood("bernoulli", LOGITS).log_prob(logits, x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12)


def test_gaussian_log_prob_matches_training_losses() -> None:
    mean = RNG.random((4, *IMAGE)).astype(np.float32)
    x = RNG.random((4, *IMAGE)).astype(np.float32)
    model = SimpleNamespace(
        config=SimpleNamespace(likelihood="gaussian"), log_scale=torch.full(IMAGE, -1.5, dtype=torch.float64)
    )
    expected = log_likelihood(model, torch.from_numpy(mean).double(), torch.from_numpy(x).double())
    got = Likelihood("gaussian", PROBS, -1.5).log_prob(mean, x)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12)


def test_which_models_can_be_scored() -> None:
    assert likelihood_of(_manifest("bernoulli", True)) == Likelihood("bernoulli", LOGITS)
    assert likelihood_of(_manifest("gaussian", False)) == Likelihood("gaussian", PROBS, -1.5)
    with pytest.raises(ScoringUnsupported, match="Gaussian decoder with a learned scale"):
        likelihood_of(_manifest("gaussian", True))


def test_log_prior_is_the_standard_normal_density() -> None:
    z = RNG.standard_normal((6, D))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(torch.from_numpy(z)).sum(-1)
    np.testing.assert_allclose(StandardNormal(D).log_prob(z), expected.numpy(), rtol=1e-12)


def _scorer(
    n: int, k: int, labels: np.ndarray | None = None, prior: Prior = STANDARD
) -> tuple[Scorer, np.ndarray]:
    rng = np.random.default_rng(1)
    images = (rng.random((n, *IMAGE)) < 0.5).astype(np.float32)
    mu = rng.standard_normal((n, D)).astype(np.float32)
    logvar = rng.normal(-1, 0.3, (n, D)).astype(np.float32)
    eps = rng.standard_normal((k, D)).astype(np.float32)
    weights = rng.standard_normal((D, math.prod(IMAGE))).astype(np.float32)
    return Scorer(Likelihood("bernoulli", LOGITS), prior, images, mu, logvar, eps, labels), weights


def _decode(z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A stand-in decoder: linear logits."""
    return (z @ weights).reshape(len(z), *IMAGE)


def test_results_do_not_depend_on_chunk_size_or_the_order_chunks_come_back() -> None:
    results = []
    for size, backwards in ((1, False), (7, True), (1000, False)):
        scorer, weights = _scorer(5, 9)
        chunks = list(scorer.chunks(size))
        for start, z, _ in reversed(chunks) if backwards else chunks:
            scorer.add(start, _decode(z, weights))
        results.append(scorer.result())
    for other in results[1:]:
        for name in ("log_likelihood", "elbo", "kl"):
            np.testing.assert_array_equal(getattr(other, name), getattr(results[0], name))


def test_the_elbo_uses_the_analytic_kl_and_an_unfinished_job_has_no_result() -> None:
    scorer, weights = _scorer(3, 4)
    with pytest.raises(RuntimeError, match="before every decoder item"):
        scorer.result()
    log_px = []
    for start, z, _ in scorer.chunks(2):
        scorer.add(start, _decode(z, weights))
        log_px.append(
            scorer.likelihood.log_prob(
                _decode(z, weights), scorer.images[np.arange(start, start + len(z)) // 4]
            )
        )
    scores = scorer.result()
    expected = np.concatenate(log_px).reshape(3, 4).mean(axis=1) - scores.kl
    np.testing.assert_allclose(scores.elbo, expected, rtol=1e-6)


def test_each_decoder_item_carries_the_label_of_its_image_across_chunks() -> None:
    scorer, _ = _scorer(3, 4, labels=np.array([2, 0, 1], np.uint8))  # MNIST's labels are uint8
    chunks = list(scorer.chunks(5))  # 12 items in chunks of 5, 5 and 2, each across two images
    labels = np.concatenate([y for _, _, y in chunks if y is not None])
    assert labels.dtype == np.int64  # what the graphs' int64 input takes
    assert labels.tolist() == [2] * 4 + [0] * 4 + [1] * 4
    assert [y for _, _, y in _scorer(3, 4)[0].chunks(5)] == [None, None, None]
    with pytest.raises(ValueError, match="2 labels for 3 images: give one label per image"):
        _scorer(3, 4, labels=np.array([0, 1]))


def test_under_a_mixture_prior_the_weights_use_its_log_prob_and_the_kl_is_estimated_from_the_draws() -> None:
    rng = np.random.default_rng(2)
    mixture = GaussianMixture(
        rng.normal(0, 2, (4, D)).astype(np.float32),
        rng.normal(0, 0.3, (4, D)).astype(np.float32),
        np.log(np.array([0.1, 0.2, 0.3, 0.4])).astype(np.float32),
    )
    scorer, weights = _scorer(3, 5, prior=mixture)
    log_w = []
    for start, z, _ in scorer.chunks(4):
        decoded = _decode(z, weights)
        scorer.add(start, decoded)
        item = np.arange(start, start + len(z))
        mu, logvar = scorer.mu[item // 5].astype(np.float64), scorer.logvar[item // 5].astype(np.float64)
        log_q = -0.5 * np.sum(np.log(2 * np.pi) + logvar + (z - mu) ** 2 / np.exp(logvar), axis=1)
        log_px = scorer.likelihood.log_prob(decoded, scorer.images[item // 5])
        log_w.append(log_px + mixture.log_prob(z) - log_q)
    weights_by_image = np.concatenate(log_w).reshape(3, 5)
    scores = scorer.result()
    bound = np.log(np.mean(np.exp(weights_by_image), axis=1))
    np.testing.assert_allclose(scores.log_likelihood, bound, rtol=1e-5)
    # No closed form: the ELBO is the mean log-weight, the KL what is left of it after log p(x|z).
    np.testing.assert_allclose(scores.elbo, weights_by_image.mean(axis=1), rtol=1e-5)
    standard = _scorer(3, 5)[0]
    assert not np.allclose(scores.kl, standard.prior.analytic_kl(standard.mu, standard.logvar))
