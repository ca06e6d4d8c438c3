"""`vae client encode-folder` and `decode-store` against the bundled mnist: the store holds what Encode
returns, an interrupted run resumes without redoing finished shards, failures are listed, and the
store decodes to a PNG per source image. Also `encode` and `decode` with one .npy of latents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import vae
from helpers.servers import RunningServer
from PIL import Image

from client import bulk
from client.clients import AsyncVaeClient, VaeClient
from client.store import LatentStore, list_sources

BUNDLED = Path(__file__).resolve().parents[3] / "models"
GOOD = 22  # 28x28 images the model takes: 21 greyscale, 1 RGB


@pytest.fixture(scope="module")
def mnist(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(BUNDLED, model="mnist")


def pixels_of(path: Path) -> np.ndarray:
    """[1, 28, 28] uint8 as the client sends the image to a greyscale model."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))[None]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Nested 28x28 PNGs, one RGB, one of a size mnist refuses, a text file, a truncated PNG, a .txt."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(21):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(sub / f"digit_{i:02d}.png")
    Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / "colour.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "big.png")
    (root / "notes.png").write_text("not a picture")
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "cut.png")
    (root / "cut.png").write_bytes((root / "cut.png").read_bytes()[:100])  # header intact, pixels cut
    (root / "readme.txt").write_text("not an input: its suffix is no image's")
    return root


def index_of(store: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (store / "index.jsonl").read_text().splitlines()]


def test_encode_folder_stores_what_encode_returns_and_lists_failures(
    mnist: RunningServer, folder: Path, tmp_path: Path
) -> None:
    store, decoded = tmp_path / "store", tmp_path / "decoded"
    flags = ["--target", mnist.target, "--batch", "4", "--shard-size", "8", "--concurrency", "3"]
    result = vae("client", "encode-folder", folder, "--out", store, *flags, check=False)
    assert result.returncode == 1, result.stderr  # some images failed
    summary = result.stderr.splitlines()
    assert summary[0].startswith(f"encoded {GOOD} images (0 done before)") and summary[0].endswith("3 failed")
    failed = dict(line.strip().split(": ", 1) for line in summary[1:])
    assert failed["notes.png"] == f"{folder / 'notes.png'}: not an image file"
    assert failed["cut.png"].startswith(f"{folder / 'cut.png'}: image file is truncated")
    assert failed["big.png"].startswith("INVALID_ARGUMENT: ")
    # 22 images of 28x28 in shards of at most 8 (one of the 23 read as 28x28 was cut); big.png none.
    assert result.stdout.splitlines() == [str(store / f"shard-0000{i}.npy") for i in range(3)]

    entries = index_of(store)
    assert len(entries) == GOOD and {(e["model"], e["version"]) for e in entries} == {("mnist", 2)}
    assert sorted(e["path"] for e in entries) == sorted(
        s.key for s in list_sources(folder) if s.key not in ("big.png", "notes.png", "cut.png")
    )
    with VaeClient(mnist.target) as client:
        for entry in entries:
            latent = np.load(store / entry["shard"])[entry["row"]]
            alone = client.encode(pixels_of(folder / entry["path"])[None]).mu[0]
            assert entry["size"] == [28, 28] and np.array_equal(latent, alone), entry["path"]

        result = vae("client", "decode-store", store, "--out", decoded, *flags[:2], "--batch", "5")
        pngs = sorted(p.relative_to(decoded).as_posix() for p in decoded.rglob("*.png"))
        assert pngs == sorted(e["path"] for e in entries)  # every source's name, .png already
        assert result.stderr.startswith(f"decoded {GOOD} images (0 done before)")
        first = entries[0]
        expected = client.decode(np.load(store / first["shard"])[[first["row"]]], output_dtype="uint8")
        np.testing.assert_array_equal(pixels_of(decoded / first["path"]), expected.images[0])

    again = vae("client", "decode-store", store, "--out", decoded, "--target", mnist.target)
    assert again.stderr.startswith(f"decoded 0 images ({GOOD} done before)"), again.stderr


def test_an_interrupted_run_resumes_without_redoing_finished_shards(
    mnist: RunningServer, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    sent: list[int] = []  # images per Encode request
    encode = AsyncVaeClient.encode

    async def counted(self: AsyncVaeClient, images: np.ndarray, **options: Any) -> Any:
        if stop_at is not None and len(sent) == stop_at:
            raise RuntimeError("interrupted")
        sent.append(len(images))
        return await encode.__get__(self, AsyncVaeClient)(images, **options)

    monkeypatch.setattr(AsyncVaeClient, "encode", counted)
    sources = list_sources(folder)
    # One request at a time: a shard is written before its last request gives up its place, so the
    # third request, the first of the second shard, finds the first shard (two requests of 4) written.
    job = bulk.Job(concurrency=1, batch=4, shard_size=8)

    async def run() -> bulk.Report:
        async with AsyncVaeClient(mnist.target) as client:
            return await bulk.encode_folder(client, sources, store, job, on_written=lambda path: None)

    stop_at: int | None = 2
    with pytest.raises(ExceptionGroup) as stopped:
        asyncio.run(run())
    assert stopped.group_contains(RuntimeError, match="interrupted")
    assert sent == [4, 4] and [e["shard"] for e in index_of(store)] == ["shard-00000.npy"] * 8
    first_shard = np.load(store / "shard-00000.npy")

    sent.clear()
    stop_at = None
    report = asyncio.run(run())
    assert report.skipped == 8 and report.done == GOOD - 8 and len(report.failures) == 3
    assert sum(sent) == GOOD - 8 + 1  # the rest, and big.png, refused; nothing of the first shard
    assert len(index_of(store)) == GOOD and len({e["path"] for e in index_of(store)}) == GOOD
    np.testing.assert_array_equal(np.load(store / "shard-00000.npy"), first_shard)
    assert LatentStore.read(store).done() == {e["path"] for e in index_of(store)}


def test_encode_writes_one_npy_of_means_and_decode_reads_it(
    mnist: RunningServer, folder: Path, tmp_path: Path
) -> None:
    target = ["--target", mnist.target]
    pngs = [folder / "a" / "digit_01.png", folder / "colour.png"]
    latents = tmp_path / "latents.npy"
    result = vae("client", "encode", *pngs, "--out", latents, *target)
    assert result.stdout == f"{latents}\n"
    with VaeClient(mnist.target) as client:
        expected = client.encode(np.stack([pixels_of(p) for p in pngs]))
    np.testing.assert_array_equal(np.load(latents), expected.mu)

    decoded = vae("client", "decode", latents, "--out", tmp_path / "decoded", *target)
    written = [str(tmp_path / "decoded" / f"decoded_000{i}.png") for i in range(2)]
    assert decoded.stdout.splitlines() == written

    # Refused before any call: two sizes cannot share one array, and a folder is no .npy to write.
    mixed = vae("client", "encode", pngs[0], folder / "big.png", "--out", latents, *target, check=False)
    assert mixed.returncode == 2 and "these are 2 sizes: pass --out DIR" in mixed.stderr
    (tmp_path / "taken.npy").mkdir()
    taken = vae("client", "encode", pngs[0], "--out", tmp_path / "taken.npy", *target, check=False)
    assert taken.returncode == 2 and "taken.npy is a directory; name the .npy file" in taken.stderr
    refused = vae("client", "encode-folder", folder / "none", "--out", tmp_path / "s", *target, check=False)
    assert refused.stderr == f"vae client: error: {folder / 'none'}: no such folder or list file\n"
