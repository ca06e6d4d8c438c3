"""Small diffusers AutoencoderKLs with random weights, built from configs: no download, seconds to import."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL

from vae_cli import main

# Tiny channels keep each import to seconds; the block counts give the real downsampling factors.
CONFIGS: dict[str, dict[str, Any]] = {
    # Stable Diffusion's shape: RGB -> 4 latent channels, factor 8.
    "sd": {"latent_channels": 4, "block_out_channels": (8, 16, 16, 16)},
    # Flux's: 16 latent channels, no quant convs, a shift factor.
    "flux": {
        "latent_channels": 16,
        "block_out_channels": (8, 16, 16, 16),
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
    },
    # One channel in and out, factor 4.
    "grey": {"in_channels": 1, "out_channels": 1, "latent_channels": 2, "block_out_channels": (8, 16, 16)},
}


# A fixed, non-square image size (HxW) for the grey model, declared at import with --image-size;
# diffusers' own sample_size says the same (it only sizes tiles there).
WIDE_SIZE = (16, 24)


def build_autoencoder(kind: str, **overrides: Any) -> Any:
    """The AutoencoderKL of CONFIGS[kind] (with `overrides`), seeded: the same weights every time."""
    config = {"in_channels": 3, "out_channels": 3, **CONFIGS[kind], **overrides}
    blocks = len(config["block_out_channels"])
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        norm_num_groups=4,
        **config,
    ).eval()


def import_autoencoder(vae: Any, root: Path, name: str, *extra: str) -> Path:
    """`vae` saved as save_pretrained does and imported as root/repo/NAME/1; returns the version's path."""
    vae.save_pretrained(root / "folder")
    args = ["import", "diffusers", str(root / "folder"), "--repo", str(root / "repo"), "--name", name]
    if main([*args, *extra]) != 0:
        raise RuntimeError(f"vae import diffusers failed for {name}")
    return root / "repo" / name / "1"


def diffusers_encode(vae: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """diffusers' latent_dist of images x: (mean, log-variance)."""
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(np.array(x))).latent_dist
    return dist.mean.numpy(), dist.logvar.numpy()


def diffusers_decode(vae: Any, z: np.ndarray) -> np.ndarray:
    """diffusers' decode of latents z, clamped to [-1, 1] as the imported decoder graph clamps it."""
    with torch.no_grad():
        return np.asarray(vae.decode(torch.from_numpy(np.array(z))).sample.clamp(-1, 1).numpy())


def declare_prior(version: Path) -> None:
    """Make the version declare has_prior, for Sample: model.json is not hashed, nor has_prior in the
    graphs' metadata, so it is the same model, declaring a prior."""
    manifest = json.loads((version / "model.json").read_text())
    manifest.update(has_prior=True)
    (version / "model.json").write_text(json.dumps(manifest))


def shapes_repo(root: Path) -> Path:
    """root/models with flux/1 (16 latent channels, a shift), grey/1 (1 -> 2 channels, factor 4, any
    size, declaring a prior) and wide/1 (grey's weights at the fixed size WIDE_SIZE, with a prior)."""
    repo = root / "models"
    wide = ["--image-size", "x".join(map(str, WIDE_SIZE))]
    for name, vae, extra in (
        ("flux", build_autoencoder("flux"), []),
        ("grey", build_autoencoder("grey"), []),
        ("wide", build_autoencoder("grey", sample_size=list(WIDE_SIZE)), wide),
    ):
        version = import_autoencoder(vae, root / name, name, *extra)
        if name != "flux":
            declare_prior(version)
        shutil.copytree(version.parent, repo / name)
    return repo
