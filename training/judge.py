"""A held-out judge of conditional generation: an MNIST classifier, and how it labels a model's samples.

The classifier never sees the VAE or its samples while it trains (MNIST train split, grey levels), so
the fraction of samples it files under the requested class measures whether conditioning works, the
way class-conditional generative models are usually checked (the "accuracy" half of a CAS/GAN-test).
Samples come from the exported decoder graph in onnxruntime, the graph the service runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from repository.manifest import read_manifest
from repository.tensor_names import LABELS, LATENTS, PROBS
from training.data import load_dataset
from training.train import to_unit_float

JUDGE_FILE = "judge.pt"


def classifier() -> nn.Module:
    """Two 3x3 conv layers with max pooling and a dense layer: over 99% on MNIST in eight epochs."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(128, 10),
    )


@dataclass(frozen=True)
class Judge:
    model: nn.Module
    test_accuracy: float

    def classify(self, images: np.ndarray) -> np.ndarray:
        """The predicted digit of each image (N, 1, 28, 28) in [0, 1]."""
        return self.predict(images)[0]

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Each image's predicted digit and the judge's probability for it; copied, so read-only arrays do."""
        self.model.eval()
        found = [
            torch.softmax(self.model(torch.tensor(images[i : i + batch], dtype=torch.float32)), 1).max(1)
            for i in range(0, len(images), batch)
        ]
        return torch.cat([f.indices for f in found]).numpy(), torch.cat([f.values for f in found]).numpy()


def train_judge(
    *, epochs: int = 8, train_subset: int = 0, data_dir: Path | None = None, seed: int = 0
) -> Judge:
    """Train the classifier on MNIST's 60,000 training images and measure it on the 10,000 test images.

    The 60,000 are the VAE's training and validation splits together: the judge sees no test image.
    Adam, batch 128, the learning rate decayed from 1e-3 to zero on a cosine over the run.
    """
    splits = load_dataset("mnist", data_dir)
    images = torch.from_numpy(np.concatenate([splits.train_x, splits.val_x])[: train_subset or None])
    labels = torch.from_numpy(np.concatenate([splits.train_y, splits.val_y])[: train_subset or None])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = classifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps = epochs * -(-len(images) // 128)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + epoch))
            for start in range(0, len(images), 128):
                index = order[start : start + 128]
                loss = F.cross_entropy(model(to_unit_float(images[index])), labels[index])
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                schedule.step()
    judge = Judge(model, 0.0)
    predicted = judge.classify(splits.test_x.astype(np.float32) / 255.0)
    return Judge(model, float((predicted == splits.test_y).mean()))


def save_judge(judge: Judge, path: Path) -> None:
    torch.save({"state": judge.model.state_dict(), "test_accuracy": judge.test_accuracy}, path)


def load_judge(path: Path) -> Judge:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = classifier()
    model.load_state_dict(payload["state"])
    return Judge(model, float(payload["test_accuracy"]))


def conditional_samples(
    version_dir: Path, per_class: int, *, temperature: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """per_class samples of every class from a conditional version's decoder: (probs, requested labels).

    z ~ N(0, temperature^2 I), through a prior flow if the model has one, and the decoder's pixel means,
    as the service's Sample returns them.
    """
    from repository.prior import FlowPrior, load_prior
    from repository.runtime import Graph  # the one module that imports onnxruntime

    manifest = read_manifest(version_dir)
    if not manifest.conditional:
        raise ValueError(f"{version_dir} is an unconditional model: it has no classes to ask for")
    decoder = Graph(version_dir / manifest.graphs["decoder"].file, intra_op_threads=torch.get_num_threads())
    labels = np.repeat(np.arange(len(manifest.classes), dtype=np.int64), per_class)
    rng = np.random.default_rng(seed)
    z = (temperature * rng.standard_normal((len(labels), manifest.latent_dim))).astype(np.float32)
    prior = load_prior(version_dir, manifest)
    if isinstance(prior, FlowPrior):  # its base is N(0, I): conditional models learn no mixture
        z = prior.latents(z)
    probs = np.concatenate(
        [
            decoder.run({LATENTS: z[i : i + 1000], LABELS: labels[i : i + 1000]}, (PROBS,))[PROBS]
            for i in range(0, len(labels), 1000)
        ]
    )
    return probs, labels


def judge_conditional_samples(
    version_dir: Path,
    judge: Judge,
    *,
    per_class: int = 1000,
    temperatures: tuple[float, ...] = (1.0,),
    seed: int = 0,
) -> dict[str, Any]:
    """The fraction of samples the judge files under the requested class, per class and overall."""
    manifest = read_manifest(version_dir)
    report: dict[str, Any] = {
        "model": f"{manifest.name}/{manifest.version}",
        "judge_test_accuracy": judge.test_accuracy,
        "samples_per_class": per_class,
        "seed": seed,
        "temperatures": {},
    }
    for temperature in temperatures:
        started = time.perf_counter()
        probs, requested = conditional_samples(version_dir, per_class, temperature=temperature, seed=seed)
        hit = judge.classify(probs) == requested
        report["temperatures"][f"{temperature:g}"] = {
            "overall": float(hit.mean()),
            "per_class": {
                name: float(hit[requested == index].mean()) for index, name in enumerate(manifest.classes)
            },
            "seconds": time.perf_counter() - started,
        }
    return report


UNSURE = 0.9  # the judge's probability for its own answer below which a sample counts as ambiguous


def judge_prior_samples(
    version_dir: Path,
    judge: Judge,
    *,
    samples: int = 10_000,
    temperatures: tuple[float, ...] = (1.0,),
    seed: int = 0,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """An unconditional version's prior samples through the judge: which digits, and how many ambiguous.

    Beside the same figures for the MNIST test images: a prior with holes decodes more samples that
    the judge cannot place, and a skewed one draws some digits more often than the data has them.
    """
    from training.pictures import prior_samples

    def shares(images: np.ndarray) -> dict[str, Any]:
        digits, confidence = judge.predict(images)
        return {
            "digit_shares": [round(float(c), 4) for c in np.bincount(digits, minlength=10) / len(digits)],
            "unsure": float((confidence < UNSURE).mean()),
        }

    manifest = read_manifest(version_dir)
    test = load_dataset("mnist", data_dir).test_x
    report: dict[str, Any] = {
        "model": f"{manifest.name}/{manifest.version}",
        "judge_test_accuracy": judge.test_accuracy,
        "unsure_means": f"the judge's probability for its answer is below {UNSURE}",
        "samples": samples,
        "seed": seed,
        "mnist_test_images": shares(test.astype(np.float32) / 255.0),
        "temperatures": {},
    }
    real = np.array(report["mnist_test_images"]["digit_shares"])
    for temperature in temperatures:
        started = time.perf_counter()
        found = shares(prior_samples(version_dir, samples, temperature, seed))
        report["temperatures"][f"{temperature:g}"] = {
            **found,
            # Total variation distance between the digits drawn and the test set's digit frequencies.
            "distance_to_test_digits": round(
                float(np.abs(np.array(found["digit_shares"]) - real).sum() / 2), 4
            ),
            "seconds": time.perf_counter() - started,
        }
    return report
