"""`vae import diffusers`: another library's VAE as a verified version of the model repository."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _diffusers(args: argparse.Namespace) -> int:
    from export.diffusers_import import import_diffusers, read_folder

    read_folder(args.folder)  # a wrong folder is refused before torch and diffusers load
    path = import_diffusers(
        args.folder, args.repo, args.name, version=args.version, fp16=args.fp16, image_size=args.image_size
    )
    print(f"imported {path}")
    return 0


def _size(text: str) -> tuple[int, int]:
    """--image-size HxW: two positive integers."""
    height, _, width = text.partition("x")
    if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise argparse.ArgumentTypeError(f"expected HxW, two positive integers (e.g. 512x768), got {text!r}")
    return int(height), int(width)


def register(commands: Any) -> None:
    command = commands.add_parser(
        "import",
        help="import another library's VAE as a new version in a model repository",
        epilog="example:\n  vae import diffusers sd-vae/ --repo models --name sd-vae",
    )
    formats = command.add_subparsers(dest="format", required=True, metavar="FORMAT")
    diffusers = formats.add_parser(
        "diffusers",
        help="an AutoencoderKL folder in diffusers' format (config.json and safetensors weights)",
        description=(
            "Exports the encoder (image in [-1, 1] -> mean and log-variance of the latent) and the decoder "
            "(latent -> image, clamped to [-1, 1]) with dynamic batch and image size, checks them against "
            "diffusers in torch, verifies and publishes the version (docs/export.md). Reads the folder "
            "only; nothing is downloaded. Needs the diffusers extra."
        ),
        epilog="example:\n  vae import diffusers sd-vae/ --repo models --name sd-vae --fp16",
    )
    diffusers.add_argument("folder", type=Path, help="the model's folder, e.g. a downloaded vae/")
    diffusers.add_argument(
        "--repo", type=Path, default=Path("models"), help="model repository (default: models)"
    )
    diffusers.add_argument("--name", required=True, help="model name, e.g. sd-vae")
    diffusers.add_argument("--version", type=int, default=None, help="default: the next free version")
    diffusers.add_argument(
        "--fp16", action="store_true", help="also write half-precision copies (for GPUs; checked within 1e-2)"
    )
    diffusers.add_argument(
        "--image-size",
        type=_size,
        default=None,
        metavar="HxW",
        help="fix the image size the graphs take (default: any size, multiples of the downsampling)",
    )
    diffusers.set_defaults(handler=_diffusers)
