"""The latent store on disk (client/store.py) and the bulk jobs' file naming: what a stopped run leaves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.bulk import png_names
from client.image_files import check_out, read_inputs, read_latents, save_array, size_groups
from client.store import INDEX, LatentStore, list_sources


def test_a_stopped_runs_leftovers_are_dropped_and_numbering_continues(tmp_path: Path) -> None:
    store = LatentStore.open(tmp_path, "m", 2)
    first = store.add_shard(["a.png", "b.png"], [(4, 4), (4, 4)], np.ones((2, 3), np.float32))
    # A run stopped after renaming its next shard, halfway through appending its index lines.
    (tmp_path / "shard-00001.npy").write_bytes(b"renamed, never indexed")
    (tmp_path / "shard-00002.npy.tmp").write_bytes(b"half written")
    with open(tmp_path / INDEX, "a") as index:
        index.write('{"path": "c.png", "si')
    again = LatentStore.open(tmp_path, "m", 2)
    assert again.done() == {"a.png", "b.png"}
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [first.name]
    second = again.add_shard(["c.png"], [(8, 8)], np.zeros((1, 3), np.float32))
    assert second.name == "shard-00001.npy"
    lines = [json.loads(line) for line in (tmp_path / INDEX).read_text().splitlines()]
    assert lines[-1] == {
        "path": "c.png", "size": [8, 8], "shard": "shard-00001.npy", "row": 0, "model": "m", "version": 2,
    }  # fmt: skip
    np.testing.assert_array_equal(again.shard("shard-00000.npy"), np.ones((2, 3), np.float32))


def test_a_store_of_another_model_version_is_refused(tmp_path: Path) -> None:
    LatentStore.open(tmp_path, "m", 2)
    with pytest.raises(ValueError, match=r"holds latents of m/2, not m/3: pass --model m --version 2"):
        LatentStore.open(tmp_path, "m", 3)
    with pytest.raises(ValueError, match=r"not a latent store \(no store\.json\)"):
        LatentStore.read(tmp_path / "elsewhere")


def test_a_store_records_whether_its_latents_are_scaled_and_refuses_mixing(tmp_path: Path) -> None:
    assert not LatentStore.open(tmp_path / "plain", "m", 1).scaled
    scaled = LatentStore.open(tmp_path / "scaled", "m", 1, scaled=True)
    assert scaled.scaled and LatentStore.read(tmp_path / "scaled").scaled
    assert json.loads((tmp_path / "scaled" / "store.json").read_text())["scaled"] is True
    with pytest.raises(ValueError, match=r"holds scaled latents: pass --scaled, or another --out"):
        LatentStore.open(tmp_path / "scaled", "m", 1)
    with pytest.raises(ValueError, match=r"holds unscaled latents: drop --scaled, or another --out"):
        LatentStore.open(tmp_path / "plain", "m", 1, scaled=True)
    # A store written before the key existed holds the encoder's own latents.
    meta = tmp_path / "plain" / "store.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "scaled"}))
    assert not LatentStore.read(tmp_path / "plain").scaled


def test_sources_from_a_folder_or_a_list_file(tmp_path: Path) -> None:
    for name in ("b/x.PNG", "a.jpg", "c.webp", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [s.key for s in list_sources(tmp_path)] == ["a.jpg", "b/x.PNG", "c.webp"]
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\nb/x.PNG\n\n/abs/y.png\n")
    assert [(s.key, s.path) for s in list_sources(listing)] == [
        ("b/x.PNG", tmp_path / "b/x.PNG"),
        ("/abs/y.png", Path("/abs/y.png")),
    ]


def test_png_names_stay_inside_the_output_and_never_collide() -> None:
    names = png_names(["a/x.jpg", "a/x.png", "../up.webp", "/abs/z.png", "noext"])
    assert names == {
        "a/x.jpg": Path("a/x.png"),
        "a/x.png": Path("a/x.png.png"),
        "../up.webp": Path("__/up.png"),
        "/abs/z.png": Path("abs/z.png"),
        "noext": Path("noext.png"),
    }


def test_rgb_and_greyscale_images_of_several_sizes_group_by_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate([(4, 6), (8, 8), (4, 6)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    files = read_inputs(paths)
    assert [file.size for file in files] == [(4, 6), (8, 8), (4, 6)]
    rgb = size_groups(files, channels=3)
    assert {shape: len(images) for shape, images in rgb.items()} == {(3, 4, 6): 2, (3, 8, 8): 1}
    with Image.open(paths[2]) as third:
        np.testing.assert_array_equal(rgb[(3, 4, 6)][1], np.asarray(third).transpose(2, 0, 1))
    assert set(size_groups(files, channels=1)) == {(1, 4, 6), (1, 8, 8)}


def test_latents_of_any_rank_and_a_file_out(tmp_path: Path) -> None:
    spatial = save_array(tmp_path, "z", np.zeros((2, 4, 3, 5), np.float32))
    flat = save_array(tmp_path, "d", np.zeros(8, np.float32))
    assert read_latents(spatial).shape == (2, 4, 3, 5) and read_latents(flat).shape == (1, 8)
    check_out(tmp_path / "new" / "latents.npy", file=True)
    with pytest.raises(ValueError, match=r"is a directory; name the \.npy file to write"):
        check_out(tmp_path, file=True)
    with pytest.raises(ValueError, match=r"z\.npy is a file; name a directory"):
        check_out(spatial / "latents.npy", file=True)
