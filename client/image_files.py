"""Images and arrays on disk for `vae client`: PNG or .npy files in, PNG or .npy files out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# PIL modes for the channel counts a PNG can hold; other counts travel as .npy.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class InputFile:
    """A file read and decoded before any call: a .npy's array as stored, or a PNG's image.

    Read first, so that a file that is not an image fails before the server does any work; turned
    into the model's channels later, once the server has said how many it takes.
    """

    path: Path
    data: np.ndarray | Image.Image

    def images(self, channels: int) -> np.ndarray:
        """[n, C, H, W]: a .npy's [C, H, W] or [n, C, H, W], or the PNG's one image in `channels`."""
        if isinstance(self.data, np.ndarray):
            return self.data[None] if self.data.ndim == 3 else self.data
        if channels not in _MODES:
            raise ValueError(f"{self.path}: the model takes {channels} channels; pass images as .npy")
        pixels = np.asarray(self.data.convert(_MODES[channels]))
        return (pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))[None]

    def endpoint(self, channels: int) -> np.ndarray:
        """An interpolation endpoint: a .npy of rank 1 is a latent [D]; anything else one image [C, H, W]."""
        if isinstance(self.data, np.ndarray) and self.data.ndim == 1:
            return self.data
        image: np.ndarray = self.images(channels)[0]
        return image


def read_inputs(paths: Sequence[Path]) -> list[InputFile]:
    """PNG files (one image each) and .npy arrays, each read and decoded now."""
    files = []
    for path in paths:
        if path.suffix == ".npy":
            files.append(InputFile(path, np.load(path)))
            continue
        try:
            with Image.open(path) as image:
                image.load()
        except UnidentifiedImageError:
            raise ValueError(f"{path}: not an image file; pass PNG files or .npy arrays") from None
        except OSError as exc:  # unreadable, or a truncated image
            raise ValueError(f"{path}: {exc.strerror or exc}") from None
        files.append(InputFile(path, image))
    return files


def image_batch(files: Sequence[InputFile], channels: int) -> np.ndarray:
    """The files' images as one [n, C, H, W] array."""
    return np.concatenate([file.images(channels) for file in files])


def check_out(out: Path) -> None:
    """Refuse an output directory that cannot be made, before the server does any work."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"--out {out}: {path} is a file; name a directory to write into")
            return


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
