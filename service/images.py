"""Images and arrays on disk for `vae client`: PNG or .npy files in, PNG or .npy files out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# PIL modes for the channel counts a PNG can hold; other counts travel as .npy.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def read_images(paths: list[Path], channels: int) -> np.ndarray:
    """PNG files (one image each) or .npy files ([C, H, W] or [n, C, H, W]) -> one [n, C, H, W] array."""
    arrays = []
    for path in paths:
        if path.suffix == ".npy":
            array = np.load(path)
            arrays.append(array[None] if array.ndim == 3 else array)
        elif channels not in _MODES:
            raise ValueError(f"{path}: the model takes {channels} channels; pass images as .npy")
        else:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(_MODES[channels]))
            arrays.append((pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))[None])
    return np.concatenate(arrays)


def read_endpoint(path: Path, channels: int) -> np.ndarray:
    """An interpolation endpoint: a .npy of rank 1 is a latent [D]; anything else one image [C, H, W]."""
    if path.suffix == ".npy":
        array: np.ndarray = np.load(path)
        if array.ndim == 1:
            return array
    image: np.ndarray = read_images([path], channels)[0]
    return image


def read_latents(path: Path) -> np.ndarray:
    """A .npy of latents, [n, D] or one [D] -> [n, D]."""
    if path.suffix != ".npy":
        raise ValueError(
            f"{path}: decode takes latents, a .npy array [n, D] such as mu.npy from `vae client encode`; "
            "to pass images through the model use `vae client reconstruct`"
        )
    latents: np.ndarray = np.load(path)
    if latents.ndim not in (1, 2):
        raise ValueError(f"{path}: latents must be [n, D] or [D], got shape {list(latents.shape)}")
    return latents[None] if latents.ndim == 1 else latents


def write_images(images: np.ndarray, out: Path, prefix: str, as_npy: bool, first: int = 0) -> list[Path]:
    """[n, C, H, W] uint8 or float32 in [0, 1] -> OUT/PREFIX_0000.png ... (or OUT/PREFIX.npy).

    PNGs are numbered from `first`, so that images arriving in chunks continue one sequence.
    """
    if as_npy:
        return [save_array(out, prefix, images)]
    out.mkdir(parents=True, exist_ok=True)
    pixels = images if images.dtype == np.uint8 else (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
    paths = []
    for i, image in enumerate(pixels, start=first):
        path = out / f"{prefix}_{i:04d}.png"
        channels = image.shape[0]
        Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0)).save(path)
        paths.append(path)
    return paths


def save_array(out: Path, name: str, array: np.ndarray) -> Path:
    """OUT/NAME.npy, creating OUT."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{name}.npy", array)
    return out / f"{name}.npy"
