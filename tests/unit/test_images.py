"""`vae client`'s files: PNGs and .npy arrays read into [n, C, H, W] and written back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.image_files import check_out, image_batch, read_inputs, save_array, write_images


def test_png_round_trip_quantizes_float_images(tmp_path: Path) -> None:
    images = np.linspace(0, 1, 2 * 16, dtype=np.float32).reshape(2, 1, 4, 4)
    paths = write_images(images, tmp_path / "out", "sample", as_npy=False)
    assert [p.name for p in paths] == ["sample_0000.png", "sample_0001.png"]
    back = image_batch(read_inputs(paths), channels=1)
    assert back.shape == (2, 1, 4, 4) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, (images * 255 + 0.5).astype(np.uint8))


def test_rgb_pngs_come_back_channels_first(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 4, 5), dtype=np.uint8)
    back = image_batch(read_inputs(write_images(images, tmp_path, "rgb", as_npy=False)), channels=3)
    np.testing.assert_array_equal(back, images)


def test_npy_files_hold_one_image_or_a_batch(tmp_path: Path) -> None:
    batch = np.zeros((2, 2, 4, 4), np.float32)
    [path] = write_images(batch, tmp_path, "all", as_npy=True)
    assert path == tmp_path / "all.npy"
    one = save_array(tmp_path, "one", batch[0])
    assert image_batch(read_inputs([path, one]), channels=2).shape == (3, 2, 4, 4)
    [png] = read_inputs(write_images(batch[:1, :1], tmp_path, "gray", as_npy=False))
    with pytest.raises(ValueError, match=r"gray_0000\.png: the model takes 2 channels; pass images as \.npy"):
        png.images(channels=2)


def test_an_endpoint_is_a_latent_when_its_npy_has_rank_one(tmp_path: Path) -> None:
    latent = save_array(tmp_path, "z", np.zeros(8, np.float32))
    image = save_array(tmp_path, "image", np.zeros((1, 4, 4), np.float32))
    ends = read_inputs([latent, image])
    assert [end.endpoint(channels=1).shape for end in ends] == [(8,), (1, 4, 4)]


def test_a_file_that_is_no_image_is_named_in_a_value_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(ValueError, match=r"notes\.png: not an image file; pass PNG files or \.npy arrays"):
        read_inputs([text])


def test_an_out_directory_that_a_file_stands_in_for_is_refused(tmp_path: Path) -> None:
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"")
    check_out(tmp_path / "new" / "dir")  # directories still to be made are fine
    for out in (taken, taken / "inside"):
        with pytest.raises(ValueError, match=r"taken\.png is a file; name a directory to write into"):
            check_out(out)
