"""Score on the bundled model agrees with `vae eval` (training/evaluate.py) on the same test images.

k = 1: fed the same draws as Score, `vae eval`'s -ELBO must agree within 0.05 nats (the arithmetic is
the same, so it agrees far closer). k = 1000: with its own draws, `vae eval`'s IW-NLL must agree
within four standard errors of the difference, estimated from Score's own spread between seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.servers import RunningServer, config_for

from client.clients import VaeClient
from training.data import EVAL_BINARIZATION_SEED, load_dataset, model_inputs
from training.evaluate import evaluate_run
from training.model import VAE

REPO = Path(__file__).resolve().parents[2] / "models"
BUNDLED = REPO / "mnist" / "2"  # the default version, which the server serves
ELBO_IMAGES, IW_IMAGES, IW_K, SEED = 1000, 10, 1000, 7


@pytest.fixture(scope="module")
def client() -> Iterator[VaeClient]:
    server = RunningServer(
        config_for(REPO, model="mnist", max_batch_items=256, max_request_items=4096, max_queue_items=4096)
    )
    try:
        with VaeClient(server.target, timeout=300) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    # The images `vae eval` scores: the test set, binarized once with its fixed seed.
    return model_inputs(load_dataset("mnist").test_x[:ELBO_IMAGES], True, EVAL_BINARIZATION_SEED)


def test_k1_mean_elbo_matches_vae_eval_on_the_same_draws(
    client: VaeClient, test_images: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scored = client.score(test_images, samples=1, seed=SEED)
    eps = torch.from_numpy(
        np.random.Generator(np.random.PCG64(SEED)).standard_normal((1, 32), dtype=np.float32)
    )

    def same_draws(mu: torch.Tensor, logvar: torch.Tensor, generator: object = None) -> torch.Tensor:
        return mu + eps * torch.exp(0.5 * logvar)  # Score's one draw, shared by every image

    monkeypatch.setattr(VAE, "reparameterize", staticmethod(same_draws))
    report = evaluate_run(
        BUNDLED, k=1, subset=ELBO_IMAGES, progress=False, out=tmp_path / "eval.json", threads=1
    )
    difference = abs(-float(scored.elbo.astype(np.float64).mean()) - report["negative_elbo"])
    print(f"\nk=1 over {ELBO_IMAGES} test images: Score -ELBO vs vae eval differ by {difference:.2e} nats")
    assert difference < 0.05


def test_k1000_mean_log_likelihood_matches_vae_eval_within_sampling_error(
    client: VaeClient, test_images: np.ndarray, tmp_path: Path
) -> None:
    images = test_images[:IW_IMAGES]
    # One request per image, each with its own seed: the images' sampling errors are independent.
    first = np.array(
        [client.score(images[i : i + 1], samples=IW_K, seed=i).log_likelihood[0] for i in range(IW_IMAGES)]
    )
    second = np.array(
        [
            client.score(images[i : i + 1], samples=IW_K, seed=10_000 + i).log_likelihood[0]
            for i in range(IW_IMAGES)
        ]
    )
    report = evaluate_run(
        BUNDLED, k=IW_K, subset=IW_IMAGES, progress=False, out=tmp_path / "eval.json", threads=1
    )
    # Per image, both estimates have the variance of one k-sample estimate: half that of first - second.
    variance = np.mean((first.astype(np.float64) - second) ** 2) / 2
    standard_error = math.sqrt(2 * variance / IW_IMAGES)  # of (Score mean - vae eval mean)
    difference = abs(-float(first.astype(np.float64).mean()) - report["iw_nll"])
    print(f"\nk={IW_K}, {IW_IMAGES} images: differ by {difference:.3f} nats, std error {standard_error:.3f}")
    assert difference < 4 * standard_error + 1e-3
