"""Images and arrays on disk for `vae client`: PNG or .npy files in, PNG or .npy files out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from client.results import ModelInfo

# PIL modes for the channel counts a PNG can hold; other counts travel as .npy.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
PNG_OR_NPY = "; pass PNG files or .npy arrays"


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

    @property
    def size(self) -> tuple[int, ...]:
        """(H, W), known before the server says how many channels it wants."""
        if isinstance(self.data, np.ndarray):
            return tuple(self.data.shape[-2:])
        return self.data.height, self.data.width

    def endpoint(self, channels: int) -> np.ndarray:
        """An interpolation endpoint: a .npy of rank 1 is a latent [D]; anything else one image [C, H, W]."""
        if isinstance(self.data, np.ndarray) and self.data.ndim == 1:
            return self.data
        image: np.ndarray = self.images(channels)[0]
        return image


@contextmanager
def _reading(path: Path, hint: str = "") -> Iterator[None]:
    """What Pillow raises for a file it cannot read becomes a ValueError naming the file and why."""
    try:
        yield
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file{hint}") from None
    except OSError as exc:  # unreadable, or a truncated image
        raise ValueError(f"{path}: {exc.strerror or exc}") from None


def model_channels(info: ModelInfo) -> int:
    """The channels images must have: image_channels, or for a server older than it image_shape's first."""
    return info.image_channels or info.image_shape[0]


def read_image(path: Path, hint: str = "") -> Image.Image:
    """The image in `path`, decoded now."""
    with _reading(path, hint), Image.open(path) as image:
        image.load()
    return image


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file's header alone: cheap, and refuses what is no image file as read_image does."""
    with _reading(path), Image.open(path) as image:
        return image.height, image.width


def read_inputs(paths: Sequence[Path]) -> list[InputFile]:
    """PNG files (one image each) and .npy arrays, each read and decoded now."""
    return [
        InputFile(path, np.load(path) if path.suffix == ".npy" else read_image(path, PNG_OR_NPY))
        for path in paths
    ]


def size_groups(files: Sequence[InputFile], channels: int) -> dict[tuple[int, ...], np.ndarray]:
    """The files' images as one [n, C, H, W] array per image shape, in the order given: one request each."""
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for file in files:
        images = file.images(channels)
        groups.setdefault(images.shape[1:], []).append(images)
    return {shape: np.concatenate(arrays) for shape, arrays in groups.items()}


def image_batch(files: Sequence[InputFile], channels: int) -> np.ndarray:
    """The files' images as one [n, C, H, W] array, for an RPC that answers one array of images."""
    groups = size_groups(files, channels)
    if len(groups) > 1:
        sizes = ", ".join("x".join(map(str, shape[1:])) for shape in groups)
        raise ValueError(f"these images have different sizes ({sizes}); pass one size per command")
    return next(iter(groups.values()))


def check_out(out: Path, *, file: bool = False) -> None:
    """Refuse an output that cannot be made, before the server does any work.

    `out` is a directory to write into, or with `file` one file to write (its folder is made).
    """
    if file and out.is_dir():
        raise ValueError(f"--out {out} is a directory; name the .npy file to write")
    for path in (out.parent, *out.parents) if file else (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"--out {out}: {path} is a file; name a directory to write into")
            return


def read_latents(path: Path) -> np.ndarray:
    """A .npy of latents, [n, ...] as `vae client encode` writes them, or one flat latent [D] -> [1, D].

    A latent of any shape travels as it is ([n, D], or spatial [n, C, h, w]); the server checks it
    against the model's. One spatial latent needs its batch axis: [1, C, h, w].
    """
    if path.suffix != ".npy":
        raise ValueError(
            f"{path}: decode takes latents, a .npy array [n, ...] such as mu.npy from `vae client encode`; "
            "to pass images through the model use `vae client reconstruct`"
        )
    latents: np.ndarray = np.load(path)
    if latents.ndim == 0:
        raise ValueError(f"{path}: latents must be [n, ...] or [D], got a scalar")
    return latents[None] if latents.ndim == 1 else latents


def write_images(images: np.ndarray, out: Path, prefix: str, as_npy: bool, first: int = 0) -> list[Path]:
    """[n, C, H, W] uint8 or float32 in [0, 1] -> OUT/PREFIX_0000.png ... (or OUT/PREFIX.npy).

    PNGs are numbered from `first`, so that images arriving in chunks continue one sequence.
    """
    if as_npy:
        return [save_array(out, prefix, images)]
    out.mkdir(parents=True, exist_ok=True)
    pixels = images if images.dtype == np.uint8 else (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
    paths = [out / f"{prefix}_{i:04d}.png" for i in range(first, first + len(pixels))]
    for path, image in zip(paths, pixels, strict=True):
        save_png(image, path)
    return paths


def save_png(pixels: np.ndarray, path: Path) -> None:
    """One uint8 image [C, H, W] (1, 3 or 4 channels) as a PNG."""
    if pixels.shape[0] not in _MODES:
        raise ValueError(f"{path}: a PNG holds 1, 3 or 4 channels, not {pixels.shape[0]}; write .npy instead")
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(path, format="PNG")


def save_array(out: Path, name: str, array: np.ndarray) -> Path:
    """OUT/NAME.npy, creating OUT."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{name}.npy", array)
    return out / f"{name}.npy"
