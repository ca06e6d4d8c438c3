"""A prior flow served (issue 31): Sample draws the base prior and maps it through the flow's inverse,
in batches of its own; Score's log p(z) includes the flow; clients see the same RPCs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers.servers import RunningServer

from client.clients import VaeClient
from client.describe import describe
from repository.manifest import read_manifest
from repository.prior import FlowPrior, load_prior
from repository.runtime import Graph
from repository.scoring import draws, likelihood_of, score_in_process
from repository.tensor_names import BASE_LATENTS, LATENTS

FLOW, LAYERS, LATENT = "tiny-flow", 3, 8  # tests/conftest.py's tiny_flow_repo


@pytest.fixture(scope="module")
def server(tiny_flow_repo: Path, start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(tiny_flow_repo, model=FLOW)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> VaeClient:
    return VaeClient(server.target)


@pytest.fixture(scope="module")
def version(tiny_flow_repo: Path) -> Path:
    path: Path = tiny_flow_repo / FLOW / "1"
    return path


@pytest.fixture(scope="module")
def prior(version: Path) -> FlowPrior:
    loaded = load_prior(version, read_manifest(version))
    assert isinstance(loaded, FlowPrior)
    return loaded


def test_model_info_names_the_flow(client: VaeClient) -> None:
    info = client.model_info()
    assert (info.prior, info.prior_flow_layers) == ("mixture", LAYERS)
    assert "has_prior       yes (mixture + 3-layer flow)" in describe(info)  # `vae client info`


def test_seeded_samples_are_the_flow_priors_own_and_the_stream_gives_the_same(
    client: VaeClient, server: RunningServer, prior: FlowPrior, version: Path
) -> None:
    batches = server.metric("vae_batch_size_items_count", graph="prior_flow")
    got = client.sample(20, seed=4, temperature=0.5)
    expected = prior.sample(np.random.Generator(np.random.PCG64(4)), 20, 0.5)
    np.testing.assert_allclose(got.latents, expected, rtol=0, atol=1e-6)
    # The latents are the flow's, not the base's draws: mapped back, they are those draws.
    u = prior.base.sample(np.random.Generator(np.random.PCG64(4)), 20, 0.5)
    assert np.abs(got.latents - u).max() > 0.1
    back = Graph(version / "prior_flow_density.onnx").run({LATENTS: got.latents}, (BASE_LATENTS,))
    np.testing.assert_allclose(back[BASE_LATENTS], u, rtol=0, atol=1e-4)
    decoded = Graph(version / "decoder.onnx").run({LATENTS: got.latents}, ("probs",))["probs"]
    np.testing.assert_allclose(got.images, decoded, rtol=0, atol=1e-6)
    # In the flow's own batches (of at most 8 items here: three of them for 20 draws).
    assert server.metric("vae_batch_size_items_count", graph="prior_flow") >= batches + 3
    chunks = list(client.sample_stream(20, seed=4, temperature=0.5))
    assert len(chunks) > 1
    np.testing.assert_allclose(np.concatenate([c.latents for c in chunks]), got.latents, rtol=0, atol=1e-6)


def test_score_includes_the_flows_log_density(client: VaeClient, prior: FlowPrior, version: Path) -> None:
    images = (np.random.default_rng(0).random((4, 1, 28, 28)) < 0.3).astype(np.float32)
    got = client.score(images, samples=20, seed=6)
    encoder, decoder = Graph(version / "encoder.onnx"), Graph(version / "decoder.onnx")
    likelihood = likelihood_of(read_manifest(version))
    eps = draws(np.random.Generator(np.random.PCG64(6)), 20, LATENT)
    want = score_in_process(encoder, decoder, likelihood, prior, images, eps)
    for name in ("log_likelihood", "elbo", "kl"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-4)
    base = score_in_process(encoder, decoder, likelihood, prior.base, images, eps)
    assert np.abs(got.log_likelihood - base.log_likelihood).min() > 0.01
