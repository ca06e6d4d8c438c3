"""What each graph's batcher runs: a batch of items in, the graph's outputs (as a tuple) out."""

from __future__ import annotations

import numpy as np

from repository.prior import FlowPrior, Prior
from repository.tensor_names import IMAGES, LATENTS, LOGVAR, MU, feeds
from service.batch_types import Items, Labelled, RunBatch, values_of
from service.graph_sources import ServedGraph


def inputs_of(name: str, items: Items) -> dict[str, np.ndarray]:
    """A batch as a graph's inputs: a conditional model's labels go to its second input."""
    return feeds(name, items.values, items.labels) if isinstance(items, Labelled) else {name: items}


def encoder_batch(graph: ServedGraph) -> RunBatch:
    def run(images: Items) -> tuple[np.ndarray, ...]:
        out = graph.run(inputs_of(IMAGES, images), (MU, LOGVAR))
        return out[MU], out[LOGVAR]

    return run


def decoder_batch(graph: ServedGraph, output: str) -> RunBatch:
    """Latents -> the one decoder output asked for; the others are never copied back."""

    def run(latents: Items) -> tuple[np.ndarray, ...]:
        return (graph.run(inputs_of(LATENTS, latents), (output,))[output],)

    return run


def scoring_batch(graph: ServedGraph, output: str, prior: Prior) -> RunBatch:
    """Latents -> (the likelihood's decoder output, log p(z)): log p(z) too off the event loop."""
    decode = decoder_batch(graph, output)

    def run(latents: Items) -> tuple[np.ndarray, ...]:
        return (*decode(latents), prior.log_prob(values_of(latents)))

    return run


def prior_sampler_batch(prior: FlowPrior) -> RunBatch:
    """Base prior draws u -> (z = f^-1(u),): a prior flow's inverse."""

    def run(u: Items) -> tuple[np.ndarray, ...]:
        return (prior.latents(values_of(u)),)

    return run
