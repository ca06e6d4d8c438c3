"""`vae client encode-folder` and `decode-store`: many images through the service, bounded and resumable.

encode_folder groups the images by size (a request holds one size), cuts each group into shards of at
most `shard_size` images, sends `batch` images a request with at most `concurrency` requests in
flight, and writes each shard (client/store.py) as soon as its last batch is back, before that batch
gives up its place: a run stopped at any point keeps every shard it finished, and the next run skips
their images. decode_store is the reverse: each row of each shard to a PNG named after its source
image, skipping PNGs already there. Images that cannot be read, and requests the server refuses,
become failures to report; anything else stops the job.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, TextIO

import grpc
import numpy as np

from client.image_files import InputFile, image_size, model_channels, read_image, save_png
from client.store import Entry, LatentStore, Source

if TYPE_CHECKING:
    from client.clients import AsyncVaeClient

Size = tuple[int, int]


@dataclass(frozen=True)
class Job:
    """Which model version, and how much work at once."""

    model: str = ""
    version: int = 0
    concurrency: int = 4  # requests in flight
    batch: int = 16  # images a request
    shard_size: int = 1024  # images a shard, at most
    scaled: bool = False  # encode_folder: store a diffusion pipeline's latents (store.json records it)

    def __post_init__(self) -> None:
        for flag, value in (("--concurrency", self.concurrency), ("--batch", self.batch)):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be at least 1, got {self.shard_size}")


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str  # the file's error, or the refused request's status and details


@dataclass
class Report:
    """What one run did: images done now, already done before, files written, what failed."""

    done: int = 0
    skipped: int = 0
    written: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


class Progress:
    """One line on stderr, rewritten in place at most five times a second; only on a terminal."""

    def __init__(self, verb: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.verb, self.total, self.stream = verb, total, stream
        self.live = stream.isatty()
        self.started = self.shown = time.monotonic()

    def show(self, report: Report, *, last: bool = False) -> None:
        now = time.monotonic()
        if not self.live or (now - self.shown < 0.2 and not last):
            return
        self.shown = now
        rate = report.done / max(now - self.started, 1e-9)
        line = f"\r{self.verb} {report.done}/{self.total} images, {len(report.failures)} failed, {rate:.0f}/s"
        self.stream.write(line + ("\n" if last else ""))
        self.stream.flush()


def _refused(keys: Sequence[str], exc: grpc.RpcError) -> list[Failure]:
    return [Failure(key, f"{exc.code().name}: {exc.details()}") for key in keys]


def _sizes(sources: Sequence[Source]) -> tuple[list[tuple[Source, Size]], list[Failure]]:
    """Each image's size from its header; a file that is no image fails here, before any request."""
    sized, failures = [], []
    for source in sources:
        try:
            sized.append((source, image_size(source.path)))
        except ValueError as exc:
            failures.append(Failure(source.key, str(exc)))
    return sized, failures


def _shards(sized: Sequence[tuple[Source, Size]], shard_size: int) -> list[list[tuple[Source, Size]]]:
    """Images of one size together, in the order first seen, cut into shards of at most shard_size."""
    groups: dict[Size, list[tuple[Source, Size]]] = {}
    for item in sized:
        groups.setdefault(item[1], []).append(item)
    return [group[i : i + shard_size] for group in groups.values() for i in range(0, len(group), shard_size)]


def _load(
    batch: Sequence[tuple[Source, Size]], channels: int
) -> tuple[list[tuple[Source, Size]], np.ndarray | None, list[Failure]]:
    """The batch's images decoded now, [n, C, H, W] uint8: a truncated file fails here, alone."""
    loaded, arrays, failures = [], [], []
    for source, size in batch:
        try:
            arrays.append(InputFile(source.path, read_image(source.path)).images(channels)[0])
        except ValueError as exc:
            failures.append(Failure(source.key, str(exc)))
            continue
        loaded.append((source, size))
    return loaded, np.stack(arrays) if arrays else None, failures


class _Shard:
    """A shard being encoded: its batches, and each batch's latents as they come back."""

    def __init__(self, items: list[tuple[Source, Size]], batch: int) -> None:
        self.batches = [items[i : i + batch] for i in range(0, len(items), batch)]
        self.results: dict[int, tuple[list[tuple[Source, Size]], np.ndarray]] = {}
        self.finished = 0

    def finish(self, index: int, encoded: list[tuple[Source, Size]], mu: np.ndarray | None) -> bool:
        """Record one batch's latents (None: none came back); True once every batch is in."""
        if mu is not None:
            self.results[index] = (encoded, mu)
        self.finished += 1
        return self.finished == len(self.batches)

    def rows(self) -> tuple[list[str], list[Size], np.ndarray | None]:
        parts = [self.results[i] for i in sorted(self.results)]
        keys = [source.key for items, _ in parts for source, _ in items]
        sizes = [size for items, _ in parts for _, size in items]
        return keys, sizes, np.concatenate([mu for _, mu in parts]) if parts else None


async def encode_folder(
    client: AsyncVaeClient,
    sources: Sequence[Source],
    out: Path,
    job: Job,
    on_written: Callable[[Path], None] = print,
) -> Report:
    """Encode the sources not yet in the store at `out` into new shards of it; see the module's docstring."""
    started = time.monotonic()
    info = await client.model_info(model=job.model, version=job.version)
    # The version that answered is pinned: a newer one loaded mid-run must not mix into the store.
    store = LatentStore.open(out, info.name, info.version, scaled=job.scaled)
    done = store.done()
    todo = [source for source in sources if source.key not in done]
    report = Report(skipped=len(sources) - len(todo))
    sized, report.failures = await asyncio.to_thread(_sizes, todo)
    progress = Progress("encoded", len(todo))
    slots = asyncio.Semaphore(job.concurrency)
    channels = model_channels(info)

    async def encode_batch(shard: _Shard, index: int) -> None:
        async with slots:
            encoded, pixels, failures = await asyncio.to_thread(_load, shard.batches[index], channels)
            report.failures += failures
            mu = None
            if pixels is not None:
                try:
                    encoded_batch = await client.encode(
                        pixels, model=info.name, version=info.version, scaled=job.scaled
                    )
                    mu = encoded_batch.mu
                    report.done += len(encoded)
                except grpc.RpcError as exc:
                    report.failures += _refused([source.key for source, _ in encoded], exc)
            if shard.finish(index, encoded, mu):
                keys, sizes, latents = shard.rows()
                if latents is not None:
                    report.written.append(store.add_shard(keys, sizes, latents))
                    on_written(report.written[-1])
            progress.show(report)

    async with asyncio.TaskGroup() as tasks:
        for items in _shards(sized, job.shard_size):
            shard = _Shard(items, job.batch)
            for index in range(len(shard.batches)):
                tasks.create_task(encode_batch(shard, index))
    progress.show(report, last=True)
    report.seconds = time.monotonic() - started
    return report


def png_names(keys: Sequence[str]) -> dict[str, Path]:
    """Each source's PNG, relative to the output folder: its path with .png, kept inside the folder.

    Two sources that would share a name (a.jpg and a.png) keep their suffix: a.jpg.png.
    """
    names: dict[str, Path] = {}
    taken: set[Path] = set()
    for key in keys:
        path = PurePath(key)
        # A list file's absolute or ../ paths still land inside the output folder.
        parts = [part for part in path.parts if part not in (path.anchor, ".")]
        inside = Path(*["__" if part == ".." else part for part in parts])
        name = inside.with_suffix(".png") if inside.suffix else inside.with_name(inside.name + ".png")
        if name in taken:
            name = inside.with_name(inside.name + ".png")
        taken.add(name)
        names[key] = name
    return names


def _write_pngs(images: np.ndarray, paths: Sequence[Path]) -> None:
    for pixels, path in zip(images, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        save_png(pixels, temporary)
        temporary.replace(path)  # a PNG is whole or absent: a rerun skips only whole ones


async def decode_store(
    client: AsyncVaeClient,
    store: LatentStore,
    out: Path,
    job: Job,
    on_written: Callable[[Path], None] = print,
) -> Report:
    """Decode every latent of the store whose PNG is not in `out` yet; see the module's docstring."""
    started = time.monotonic()
    names = png_names([entry.path for entry in store.entries])
    todo = [entry for entry in store.entries if not (out / names[entry.path]).exists()]
    report = Report(skipped=len(store.entries) - len(todo))
    by_shard: dict[str, list[Entry]] = {}
    for entry in todo:
        by_shard.setdefault(entry.shard, []).append(entry)
    progress = Progress("decoded", len(todo))
    slots = asyncio.Semaphore(job.concurrency)
    model = (job.model, job.version) if job.model else (store.model, store.version)

    async def decode_batch(batch: list[Entry]) -> None:
        keys = [entry.path for entry in batch]
        async with slots:
            try:
                latents = np.asarray(store.shard(batch[0].shard)[[entry.row for entry in batch]])
            except (OSError, ValueError) as exc:
                report.failures += [Failure(key, f"{batch[0].shard}: {exc}") for key in keys]
                return
            try:
                decoded = await client.decode(
                    latents, output_dtype="uint8", model=model[0], version=model[1], scaled=store.scaled
                )
                images = decoded.images
            except grpc.RpcError as exc:
                report.failures += _refused(keys, exc)
                return
            paths = [out / names[key] for key in keys]
            await asyncio.to_thread(_write_pngs, images, paths)
            report.done += len(batch)
            for path in paths:
                on_written(path)
            progress.show(report)

    async with asyncio.TaskGroup() as tasks:
        for entries in by_shard.values():
            for i in range(0, len(entries), job.batch):
                tasks.create_task(decode_batch(entries[i : i + job.batch]))
    progress.show(report, last=True)
    report.seconds = time.monotonic() - started
    return report


def summary(report: Report, verb: str, shown: int = 20) -> str:
    """The run in a line, then up to `shown` failures, one a line."""
    rate = report.done / max(report.seconds, 1e-9)
    lines = [
        f"{verb} {report.done} images ({report.skipped} done before) in {report.seconds:.1f} s, "
        f"{rate:.0f} images/s; {len(report.failures)} failed"
    ]
    lines += [f"  {failure.path}: {failure.reason}" for failure in report.failures[:shown]]
    if len(report.failures) > shown:
        lines.append(f"  ... and {len(report.failures) - shown} more; run again to retry them all")
    return "\n".join(lines)
