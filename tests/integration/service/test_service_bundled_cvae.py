"""The bundled conditional model, served beside the default one: its samples are the digits asked for.

A held-out judge (training/judge.py, trained here on MNIST alone, briefly) classifies what the service
returns; the full measurement (a judge over 99%, 1,000 samples a class) is in docs/results.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers.servers import RunningServer

from service.client import VaeClient
from training.data import default_data_dir, prepare_mnist
from training.judge import Judge, train_judge

BUNDLED = Path(__file__).resolve().parents[3] / "models"
DIGITS = tuple(str(d) for d in range(10))
PER_CLASS = 20


@pytest.fixture(scope="module")
def judge() -> Judge:
    """Two epochs on 20,000 training images: about 97% on the test set, in seconds."""
    directory = default_data_dir().resolve()
    prepare_mnist(directory)
    return train_judge(epochs=2, train_subset=20_000, data_dir=directory)


def test_bundled_conditional_samples_are_classified_as_asked(
    judge: Judge, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server(BUNDLED, model="mnist")
    requested = np.repeat(np.arange(10), PER_CLASS)
    with VaeClient(server.target) as client:
        info = client.model_info("mnist-cvae")
        assert tuple(info.classes) == DIGITS and not info.is_default
        # One label for a whole request, and one label per item in a request that mixes them.
        per_class = [client.sample(PER_CLASS, seed=d, model="mnist-cvae", labels=d) for d in range(10)]
        mixed = client.sample(50, seed=11, temperature=1.0, model="mnist-cvae", labels=requested[::4])
        default = client.sample(4, seed=7)
    assert judge.test_accuracy > 0.9
    assert per_class[0].model == ("mnist-cvae", 1) and default.model == ("mnist", 1)
    hits = judge.classify(np.concatenate([s.images for s in per_class])) == requested
    mixed_hits = judge.classify(mixed.images) == requested[::4]
    # Chance is 10%; with a 99.2% judge the bundled model measures 97.3% at T = 1 (docs/results.md).
    assert hits.mean() >= 0.8, hits.reshape(10, PER_CLASS).mean(1)
    assert hits.reshape(10, PER_CLASS).mean(1).min() >= 0.5
    assert mixed_hits.mean() >= 0.8
