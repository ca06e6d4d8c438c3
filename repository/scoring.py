"""Per-image log-likelihood in numpy around the two graphs: importance sampling (Burda et al. 2015).

log p(x) >= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i = mu + eps_i * sigma ~ q(z|x), with the
model's own prior p(z) (repository/prior.py). The k draws eps_i are shared by every image of a
request, so an image's score depends only on the image, k and the draws: scoring images one at a
time or together gives the same numbers. The decoder items (k per
image) can be computed in any chunks and any order; `Scorer.add` files each chunk's weights by item
index and `Scorer.result` reduces each image's k weights in a fixed order, so chunking never shows.
A conditional model's image is scored under its label: the encoder is fed it with the image, and the
decoder with each of the image's k draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from repository.errors import VaeError
from repository.manifest import Manifest
from repository.prior import LOG_2PI, Prior
from repository.runtime import Graph
from repository.tensor_names import IMAGES, LATENTS, LOGITS, LOGVAR, MU, PROBS, feeds


class ScoringUnsupported(VaeError, ValueError):
    """The model's exported files do not determine its likelihood, so no score can be computed."""


@dataclass(frozen=True)
class Likelihood:
    """p(x|z) of a model: which decoder output it reads, and for a Gaussian its fixed log-scale."""

    kind: str  # "bernoulli" or "gaussian"
    output: str  # LOGITS for a Bernoulli decoder, PROBS (the mean) for a Gaussian one
    log_scale: float = 0.0

    def log_prob(self, decoded: np.ndarray, x: np.ndarray) -> np.ndarray:
        """log p(x|z) summed over pixels, one float64 value per row (training/losses.py's formulas)."""
        d = decoded.reshape(len(decoded), -1).astype(np.float64)
        y = x.reshape(len(x), -1).astype(np.float64)
        if self.kind == "bernoulli":
            # -BCE with logits in its stable form: x*l - softplus(l), softplus(l) = log(1 + e^l).
            return np.asarray(np.sum(y * d - np.logaddexp(0.0, d), axis=1))
        scaled = (y - d) * math.exp(-self.log_scale)
        return np.asarray(np.sum(-0.5 * scaled * scaled - self.log_scale - 0.5 * LOG_2PI, axis=1))


def likelihood_of(manifest: Manifest) -> Likelihood:
    """The model's p(x|z); a Gaussian decoder with a learned scale cannot be scored from its files."""
    if not manifest.scorable:
        raise ScoringUnsupported(
            f"model {manifest.name!r} version {manifest.version} declares no likelihood worth scoring "
            f"(its decoder gives {manifest.decoder_output!r})"
        )
    if manifest.likelihood == "bernoulli":
        return Likelihood("bernoulli", LOGITS)
    model: Mapping[str, Any] = manifest.training.get("model", {})
    if model.get("gaussian_learned_scale", True):
        raise ScoringUnsupported(
            f"model {manifest.name!r} version {manifest.version} has a Gaussian decoder with a learned "
            "scale, which its exported graphs do not carry, so its likelihood cannot be computed"
        )
    return Likelihood("gaussian", PROBS, float(model.get("gaussian_log_scale", 0.0)))


def draws(rng: np.random.Generator, k: int, latent_dim: int) -> np.ndarray:
    """The k standard-normal draws eps [k, D] float32 that every image of a request shares."""
    return rng.standard_normal((k, latent_dim), dtype=np.float32)


@dataclass(frozen=True)
class Scores:
    """Per image, float32 nats: the importance-weighted bound, the ELBO and the KL.

    The ELBO is mean_i log p(x|z_i) - KL. Under N(0, I) the KL is analytic (Kingma & Welling's
    lower-variance estimator, the one `vae eval` reports); the bound's k = 1 case, log p(x|z) p(z) /
    q(z|x), has the same expectation but samples the KL too. Under a learned (mixture) prior the KL has
    no closed form: it is the Monte Carlo estimate over the same k draws, mean_i [log q(z_i|x) -
    log p(z_i)], so the ELBO is mean_i of the log-weights.
    """

    log_likelihood: np.ndarray
    elbo: np.ndarray
    kl: np.ndarray


class Scorer:
    """The decoder items of one scoring job, k per image (image-major), and their log-weights.

    `labels`, a conditional model's class of each image (None for an unconditional model), go with
    every decoder item of their image. `prior` is the model's p(z) (repository/prior.py).
    """

    def __init__(
        self,
        likelihood: Likelihood,
        prior: Prior,
        images: np.ndarray,
        mu: np.ndarray,
        logvar: np.ndarray,
        eps: np.ndarray,
        labels: np.ndarray | None = None,
    ) -> None:
        self.likelihood = likelihood
        self.prior = prior
        self.images, self.mu, self.eps = images, mu, eps
        self.labels = _labels(labels, len(images))
        self.sigma = np.exp(np.float32(0.5) * logvar)
        self.logvar = logvar
        self.k = len(eps)
        self.items = len(images) * self.k
        self._log_w = np.full(self.items, np.nan)
        self._log_px = np.full(self.items, np.nan)

    def latents(self, start: int, stop: int) -> np.ndarray:
        """z for items start..stop-1: item t is draw t % k of image t // k; [stop - start, D] float32."""
        t = np.arange(start, stop)
        image, draw = t // self.k, t % self.k
        return np.asarray(self.mu[image] + self.eps[draw] * self.sigma[image])

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """(first item, latents, labels or None) for consecutive chunks of at most `size` items."""
        for start in range(0, self.items, size):
            stop = min(start + size, self.items)
            labels = None if self.labels is None else self.labels[np.arange(start, stop) // self.k]
            yield start, self.latents(start, stop), labels

    def add(self, start: int, decoded: np.ndarray, log_prior: np.ndarray | None = None) -> None:
        """File the log-weights of items start.. from the decoder's output for their latents.

        log_prior: log p(z) of those latents when the caller computed it (the service does, in the
        batch's thread, beside the decoder); else computed here.
        """
        t = np.arange(start, start + len(decoded))
        image, draw = t // self.k, t % self.k
        if log_prior is None:
            log_prior = self.prior.log_prob(self.latents(start, start + len(decoded)))
        eps = self.eps[draw].astype(np.float64)
        # log q(z|x) from eps directly: (z - mu)^2 / sigma^2 is eps^2, without the rounding of z - mu.
        log_q = -0.5 * np.sum(LOG_2PI + self.logvar[image].astype(np.float64) + eps * eps, axis=1)
        log_px = self.likelihood.log_prob(decoded, self.images[image])
        self._log_px[start : start + len(decoded)] = log_px
        self._log_w[start : start + len(decoded)] = log_px + log_prior - log_q

    def result(self) -> Scores:
        log_w = self._log_w.reshape(len(self.images), self.k)
        if np.isnan(log_w).any():
            raise RuntimeError("result() before every decoder item was added")
        top = log_w.max(axis=1)
        # log-sum-exp per image, shifted by its largest weight so that no exp overflows.
        lse = top + np.log(np.sum(np.exp(log_w - top[:, None]), axis=1))
        log_px = self._log_px.reshape(log_w.shape)
        kl = self.prior.analytic_kl(self.mu, self.logvar)
        if kl is None:
            kl = np.mean(log_px - log_w, axis=1)  # log q(z_i|x) - log p(z_i), averaged over the draws
        elbo = log_px.mean(axis=1) - kl
        return Scores(
            log_likelihood=(lse - math.log(self.k)).astype(np.float32),
            elbo=elbo.astype(np.float32),
            kl=kl.astype(np.float32),
        )


def score_in_process(
    encoder: Graph,
    decoder: Graph,
    likelihood: Likelihood,
    prior: Prior,
    images: np.ndarray,
    eps: np.ndarray,
    chunk: int = 256,
    *,
    labels: np.ndarray | None = None,
) -> Scores:
    """The arithmetic the service's Score does, on graphs run in this process (export, benchmarks).

    `labels`: a conditional model's class of each image; None for an unconditional model.
    """
    y = _labels(labels, len(images))
    encoded = encoder.run(feeds(IMAGES, images, y), (MU, LOGVAR))
    return decode_all(decoder, Scorer(likelihood, prior, images, encoded[MU], encoded[LOGVAR], eps, y), chunk)


def decode_all(decoder: Graph, scorer: Scorer, chunk: int = 256) -> Scores:
    """Run every decoder item `scorer` needs in this process, `chunk` at a time; its scores."""
    output = scorer.likelihood.output
    for start, z, labels in scorer.chunks(chunk):
        scorer.add(start, decoder.run(feeds(LATENTS, z, labels), (output,))[output])
    return scorer.result()


def _labels(labels: np.ndarray | None, images: int) -> np.ndarray | None:
    """Class indices as the graphs take them (int64), one per image; MNIST's come as uint8."""
    if labels is None:
        return None
    if len(labels) != images:
        raise ValueError(f"{len(labels)} labels for {images} images: give one label per image")
    return np.asarray(labels, dtype=np.int64)


REFERENCE_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def score_reference(
    encoder: Graph,
    decoder: Graph,
    manifest: Manifest,
    prior: Prior,
    images: np.ndarray,
    *,
    k: int,
    seed: int,
    described: str,
    labels: np.ndarray | None = None,
    group: int = 500,
) -> dict[str, Any]:
    """Quantiles of the log-likelihood Score gives `images` with k draws from PCG64(seed), for model.json.

    Scored `group` images at a time (same numbers: the draws are shared), so memory stays bounded.
    `labels`: a conditional model's class of each image, which each image is scored under; `prior`:
    the version's p(z) (repository.prior.load_prior).
    """
    likelihood = likelihood_of(manifest)
    eps = draws(np.random.Generator(np.random.PCG64(seed)), k, manifest.latent_dim)
    scores = np.concatenate(
        [
            score_in_process(
                encoder,
                decoder,
                likelihood,
                prior,
                images[i : i + group],
                eps,
                labels=None if labels is None else labels[i : i + group],
            ).log_likelihood
            for i in range(0, len(images), group)
        ]
    ).astype(np.float64)
    return {
        "k": k,
        "seed": seed,
        "images": len(images),
        "data": described,
        "median": float(np.median(scores)),
        "mean": float(scores.mean()),
        "quantiles": {f"{q:g}": float(np.quantile(scores, q)) for q in REFERENCE_QUANTILES},
    }
