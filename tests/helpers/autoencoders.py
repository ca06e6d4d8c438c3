"""Small diffusers AutoencoderKLs with random weights, built from configs: no download, seconds to import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def build_autoencoder(kind: str) -> Any:
    """The AutoencoderKL of CONFIGS[kind], seeded: the same weights every time."""
    config = {"in_channels": 3, "out_channels": 3, **CONFIGS[kind]}
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
