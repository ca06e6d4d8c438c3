"""torch eager on the graphs' own weights: the VAE rebuilt from its model.json and the ONNX initializers.

torch.onnx named each graph's weights by their path in the traced module (export/graphs.py), so the
training code's VAE takes them back as they are. Needs torch and onnx; without either, the sweep
records why its torch row is empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repository.manifest import Manifest
from repository.tensor_names import GRAPHS

# export/graphs.py's WEIGHTS_PREFIX; export itself is not imported, it needs the whole train extra.
WEIGHTS_PREFIX = "vae."


@dataclass(frozen=True)
class Eager:
    """The rebuilt VAE on a torch device, and what it runs with."""

    model: Any  # training.model.VAE; torch stays out of this module's imports
    device: str
    about: dict[str, Any]

    def runner(self, role: str, batch: np.ndarray) -> Callable[[], tuple[np.ndarray, ...]]:
        """A host-to-host run as the service makes one: copy in, run, copy back what it sends (mu and
        logvar; the decoder's pixel means)."""
        import torch

        model, device = self.model, self.device

        def encode() -> tuple[np.ndarray, ...]:
            with torch.inference_mode():
                mu, logvar = model.encode(torch.from_numpy(batch).to(device))
                return mu.cpu().numpy(), logvar.cpu().numpy()

        def decode() -> tuple[np.ndarray, ...]:
            with torch.inference_mode():
                return (model.decode_mean(torch.from_numpy(batch).to(device)).cpu().numpy(),)

        return encode if role == "encoder" else decode


def load(version_dir: Path, manifest: Manifest, device: str) -> Eager | str:
    """The VAE on `device` ("cuda:N" or "cpu"), or why it cannot be had here."""
    if manifest.conditional:
        return "conditional models are not rebuilt (the sweep feeds no labels)"
    try:
        import onnx
        import torch
        from onnx import numpy_helper

        from training.config import model_config_from_dict
        from training.model import VAE
    except ImportError as exc:
        return f"needs torch and onnx: {exc}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    config = model_config_from_dict(dict(manifest.training["model"]))
    # A VampPrior's pseudo-inputs are not exported; the prior plays no part in encode or decode.
    config = dataclasses.replace(config, prior="mixture") if config.prior == "vamp" else config
    model = VAE(config)
    weights = {
        initializer.name.removeprefix(WEIGHTS_PREFIX): torch.from_numpy(
            numpy_helper.to_array(initializer).copy()
        )
        for role in GRAPHS
        for initializer in onnx.load(str(version_dir / manifest.graphs[role].file)).graph.initializer
        if initializer.name.startswith(WEIGHTS_PREFIX)
    }
    missing = [key for key in model.load_state_dict(weights, strict=False).missing_keys if "prior" not in key]
    if missing:
        return f"the graphs lack weights of the rebuilt model: {missing}"
    model = model.eval().to(device)
    about = {
        "torch": torch.__version__,
        "device": device,
        # torch's defaults: TF32 off for matmuls, on for cuDNN convolutions.
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    return Eager(model, device, about)
