"""`vae client`'s files: PNGs and .npy arrays read into [n, C, H, W] and written back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.images import read_endpoint, read_images, save_array, write_images


def test_png_round_trip_quantizes_float_images(tmp_path: Path) -> None:
    images = np.linspace(0, 1, 2 * 16, dtype=np.float32).reshape(2, 1, 4, 4)
    paths = write_images(images, tmp_path / "out", "sample", as_npy=False)
    assert [p.name for p in paths] == ["sample_0000.png", "sample_0001.png"]
    back = read_images(paths, channels=1)
    assert back.shape == (2, 1, 4, 4) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, (images * 255 + 0.5).astype(np.uint8))


def test_rgb_pngs_come_back_channels_first(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 4, 5), dtype=np.uint8)
    back = read_images(write_images(images, tmp_path, "rgb", as_npy=False), channels=3)
    np.testing.assert_array_equal(back, images)


def test_npy_files_hold_one_image_or_a_batch(tmp_path: Path) -> None:
    batch = np.zeros((2, 2, 4, 4), np.float32)
    [path] = write_images(batch, tmp_path, "all", as_npy=True)
    assert path == tmp_path / "all.npy"
    one = save_array(tmp_path, "one", batch[0])
    assert read_images([path, one], channels=2).shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"the model takes 2 channels; pass images as \.npy"):
        read_images([tmp_path / "x.png"], channels=2)


def test_an_endpoint_is_a_latent_when_its_npy_has_rank_one(tmp_path: Path) -> None:
    latent = save_array(tmp_path, "z", np.zeros(8, np.float32))
    image = save_array(tmp_path, "image", np.zeros((1, 4, 4), np.float32))
    assert read_endpoint(latent, channels=1).shape == (8,)
    assert read_endpoint(image, channels=1).shape == (1, 4, 4)
