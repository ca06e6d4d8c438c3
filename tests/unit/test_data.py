"""Dataset loaders: formats, round trips, and the refusals that protect training."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import (
    DataError,
    binarize_for_eval,
    load_dataset,
    mnist_from_pickle_bytes,
    write_idx,
)


def _images(n: int, h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    train, test = _images(60), _images(12, seed=1)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(60, dtype=np.uint8) % 10)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(12, dtype=np.uint8) % 10)
    splits = load_dataset(str(tmp_path))
    assert splits.image_shape == (1, 8, 8)
    np.testing.assert_array_equal(np.concatenate([splits.train_x, splits.val_x])[:, 0], train)
    np.testing.assert_array_equal(splits.test_x[:, 0], test)
    assert splits.test_y.tolist() == [i % 10 for i in range(12)]


def test_idx_with_wrong_byte_count_is_refused(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", _images(10))
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(DataError, match="header says"):
        load_dataset(str(tmp_path))


def test_npz_with_splits_and_float_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        f"{s}_x": rng.random((n, 3, 4, 8), dtype=np.float32)
        for s, n in [("train", 9), ("val", 3), ("test", 2)]
    }
    np.savez(tmp_path / "d.npz", **arrays, train_y=np.arange(9))
    splits = load_dataset(str(tmp_path / "d.npz"))
    assert splits.image_shape == (3, 4, 8) and splits.train_x.dtype == np.uint8
    np.testing.assert_array_equal(splits.test_x, np.rint(arrays["test_x"] * 255).astype(np.uint8))
    assert splits.train_y.tolist() == list(range(9)) and splits.val_y.tolist() == [-1] * 3


def test_npy_single_pool_is_split(tmp_path: Path) -> None:
    np.save(tmp_path / "pool.npy", _images(50))
    splits = load_dataset(str(tmp_path / "pool.npy"))
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (40, 5, 5)


def test_image_folder_with_labels(tmp_path: Path) -> None:
    for label in (3, 7):
        (tmp_path / str(label)).mkdir()
        for i, pixels in enumerate(_images(5, seed=label)):
            Image.fromarray(pixels, mode="L").save(tmp_path / str(label) / f"{i}.png")
    splits = load_dataset(str(tmp_path))
    assert splits.image_shape == (1, 8, 8)
    labels = np.concatenate([splits.train_y, splits.val_y, splits.test_y])
    assert sorted(labels.tolist()) == [3] * 5 + [7] * 5


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 2, 3, 8, 8), np.uint8), "expected images shaped"),
        (np.zeros((0, 8, 8), np.uint8), "no images"),
        (np.full((4, 8, 8), 2.0, np.float32), "within \\[0, 1\\]"),
        (np.zeros((4, 8, 8), np.int32), "dtype int32"),
        (np.zeros((4, 10, 8), np.uint8), "divisible by 4"),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "bad.npy"))


def test_missing_and_empty_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "nothing.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG or JPEG"):
        load_dataset(str(tmp_path / "empty"))


class _Tripwire:
    """Unpickling this writes a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "unpickled"))


def test_pickle_with_wrong_hash_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    blob = gzip.compress(pickle.dumps(_Tripwire(str(marker))))
    with pytest.raises(DataError, match="refusing to unpickle"):
        mnist_from_pickle_bytes(blob)
    assert not marker.exists()


def test_eval_binarization_is_fixed_and_unbiased() -> None:
    images = np.full((200, 1, 8, 8), 64, np.uint8)
    first, second = binarize_for_eval(images), binarize_for_eval(images)
    np.testing.assert_array_equal(first, second)
    assert set(np.unique(first).tolist()) == {0.0, 1.0}
    assert abs(first.mean() - 64 / 255) < 0.01
