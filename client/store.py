"""A latent store on disk: .npy shards of mean latents, an index of what each row is, resumable writes.

    STORE/store.json        {"format": 1, "model": NAME, "version": N, "stored": "mu", "scaled": false}
    STORE/index.jsonl       one line per image: {"path", "size": [H, W], "shard", "row", "model", "version"}
    STORE/shard-00000.npy   float32 [rows, *latent_shape]: the encoder's mean, one row per image

A shard is written whole to a temporary file and renamed into place, then its index lines are appended
in one write: an image is in the store once its line is, and a rerun skips it. A shard the index does
not name (a run stopped between the rename and the append) and leftover temporary files are removed
when the store is opened again. `scaled`: the rows are a diffusion pipeline's latents,
(mu - shift_factor) * scaling_factor (false where store.json predates the key).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
INDEX = "index.jsonl"
META = "store.json"
# Formats Pillow reads that photo and dataset folders hold; anything else in a folder is not an input.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})


@dataclass(frozen=True)
class Source:
    """One input image: `key` names it in the index (relative to the folder or as the list wrote it)."""

    key: str
    path: Path


@dataclass(frozen=True)
class Entry:
    """One index line: where an image's latent is."""

    path: str
    size: tuple[int, int]
    shard: str
    row: int
    model: str
    version: int


def list_sources(source: Path) -> list[Source]:
    """A folder's images, recursively, in path order; or a list file's, one path a line.

    A list file's relative paths are relative to its folder; blank lines and lines starting with # are
    skipped.
    """
    if source.is_dir():
        return [
            Source(path.relative_to(source).as_posix(), path)
            for path in sorted(source.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        ]
    if not source.is_file():
        raise ValueError(f"{source}: no such folder or list file")
    lines = (line.strip() for line in source.read_text().splitlines())
    return [Source(line, source.parent / line) for line in lines if line and not line.startswith("#")]


def _atomic_write(path: Path, write: Any) -> None:
    """`write(handle)` into PATH.tmp, flushed to disk, then renamed over PATH: PATH is whole or absent."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class LatentStore:
    """A store opened for reading, or for adding shards encoded by one model version."""

    def __init__(
        self, root: Path, model: str, version: int, entries: list[Entry], *, scaled: bool = False
    ) -> None:
        self.root = root
        self.model = model
        self.version = version
        self.entries = entries
        self.scaled = scaled
        named = {entry.shard for entry in entries}
        self._next = 1 + max((int(name.removeprefix("shard-")[:-4]) for name in named), default=-1)

    @classmethod
    def read(cls, root: Path) -> LatentStore:
        """An existing store, as its index says (a partial last line, from a stopped run, is dropped)."""
        if not (root / META).is_file():
            raise ValueError(f"{root}: not a latent store (no {META}); `vae client encode-folder` makes one")
        meta = json.loads((root / META).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{root}: store format {meta.get('format')}, this client reads {FORMAT}")
        entries = list(_read_index(root / INDEX))
        return cls(root, meta["model"], meta["version"], entries, scaled=bool(meta.get("scaled", False)))

    @classmethod
    def open(cls, root: Path, model: str, version: int, *, scaled: bool = False) -> LatentStore:
        """A store to add to, made if new; one of another model version or scaling is refused, not mixed."""
        if root.exists() and not root.is_dir():
            raise ValueError(f"--out {root} is a file; name a folder for the store")
        if not (root / META).exists():
            root.mkdir(parents=True, exist_ok=True)
            meta = {"format": FORMAT, "model": model, "version": version, "stored": "mu", "scaled": scaled}
            _atomic_write(root / META, lambda handle: handle.write(json.dumps(meta).encode()))
        store = cls.read(root)
        if (store.model, store.version) != (model, version):
            raise ValueError(
                f"{root} holds latents of {store.model}/{store.version}, not {model}/{version}: "
                f"pass --model {store.model} --version {store.version}, or another --out"
            )
        if store.scaled != scaled:
            held, flag = ("scaled", "pass --scaled") if store.scaled else ("unscaled", "drop --scaled")
            raise ValueError(f"{root} holds {held} latents: {flag}, or another --out")
        store._clean()
        return store

    def _clean(self) -> None:
        """Remove what a stopped run left: temporary files, and shards no index line names."""
        named = {entry.shard for entry in self.entries}
        for path in self.root.glob("shard-*.npy*"):
            if path.name not in named:
                path.unlink()
        index = self.root / INDEX
        if index.exists():  # drop a partial last line, so that the next append starts a line of its own
            text = index.read_bytes()
            index.write_bytes(text[: text.rfind(b"\n") + 1])

    def done(self) -> set[str]:
        return {entry.path for entry in self.entries}

    def add_shard(self, keys: Sequence[str], sizes: Sequence[tuple[int, int]], latents: np.ndarray) -> Path:
        """Write `latents` (row i is keys[i]'s) as the next shard, then index it; returns the shard's path."""
        name = f"shard-{self._next:05d}.npy"
        self._next += 1
        rows = latents.astype(np.float32, copy=False)
        _atomic_write(self.root / name, lambda handle: np.save(handle, rows))
        entries = [
            Entry(key, size, name, row, self.model, self.version)
            for row, (key, size) in enumerate(zip(keys, sizes, strict=True))
        ]
        lines = "".join(json.dumps(_as_json(entry)) + "\n" for entry in entries)
        with open(self.root / INDEX, "a") as index:
            index.write(lines)
            index.flush()
            os.fsync(index.fileno())
        self.entries.extend(entries)
        return self.root / name

    def shard(self, name: str) -> np.ndarray:
        loaded: np.ndarray = np.load(self.root / name, mmap_mode="r")
        return loaded


def _as_json(entry: Entry) -> dict[str, Any]:
    return {
        "path": entry.path,
        "size": list(entry.size),
        "shard": entry.shard,
        "row": entry.row,
        "model": entry.model,
        "version": entry.version,
    }


def _read_index(path: Path) -> Iterator[Entry]:
    if not path.exists():
        return
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            return  # written partly when a run stopped: its images are not in the store
        row = json.loads(line)
        height, width = row["size"]
        yield Entry(row["path"], (height, width), row["shard"], row["row"], row["model"], row["version"])
