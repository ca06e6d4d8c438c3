"""Parity: the exported graphs run in onnxruntime against the PyTorch model, at several batch sizes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from export.errors import ExportError
from repository.comparison import (
    compare_outputs,
    probe_images,
    probe_labels,
    probe_latents,
    recorded_difference,
)
from repository.runtime import Graph
from repository.tensor_names import GRAPHS, IMAGES, LABELS, LATENTS
from training.model import VAE

PARITY_BATCH_SIZES = (1, 7, 64)
PARITY_TOLERANCE = 1e-4


def check_parity(model: VAE, graphs_dir: Path) -> dict[str, float]:
    """onnxruntime against PyTorch at each parity batch size; max abs difference per graph."""
    config = model.config
    encoder = Graph(graphs_dir / "encoder.onnx")
    decoder = Graph(graphs_dir / "decoder.onnx")
    worst = dict.fromkeys(GRAPHS, 0.0)
    for batch in PARITY_BATCH_SIZES:
        x = probe_images(config.image_shape, batch, seed=batch)
        z = probe_latents(config.latent_dim, batch, seed=batch)
        feeds: dict[str, np.ndarray] = {}
        y = None
        if config.conditional:
            feeds[LABELS] = probe_labels(len(config.classes), batch)
            y = torch.from_numpy(feeds[LABELS])
        with torch.no_grad():
            mu, logvar = model.encode(torch.from_numpy(x), y)
            expected = {
                "encoder": {"mu": mu.numpy(), "logvar": logvar.numpy()},
                "decoder": {"probs": model.decode_mean(torch.from_numpy(z), y).numpy()},
            }
            if config.likelihood == "bernoulli":
                expected["decoder"]["logits"] = model.decode(torch.from_numpy(z), y).numpy()
        actual = {"encoder": encoder.run({IMAGES: x, **feeds}), "decoder": decoder.run({LATENTS: z, **feeds})}
        for role in GRAPHS:
            worst[role] = max(worst[role], parity_difference(role, batch, expected[role], actual[role]))
    return worst


def parity_difference(
    graph: str, batch: int, expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]
) -> float:
    """One graph's outputs against PyTorch's at one batch size: the difference model.json records.

    Raises ExportError, naming the graph, the output and the batch size, past PARITY_TOLERANCE.
    """
    differences = compare_outputs(expected, actual, PARITY_TOLERANCE)
    for d in differences:
        if not d.ok:
            raise ExportError(
                f"parity failed for the {graph} graph: output {d.output!r} at batch size {batch} "
                f"{d.describe('PyTorch')}; nothing was written"
            )
    return recorded_difference(differences)
