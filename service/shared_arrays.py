"""Arrays between the workers and the device executor (service/executor.py), through shared memory.

A segment is a file on a memory file system (/dev/shm) that both processes map: its one writer
grows it by starting a new file when a batch does not fit, and names the file in every message,
so the other side maps each file once and the messages carry only names, dtypes, shapes and
offsets. Each side writes only its own segments: a worker's inputs, the executor's outputs.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# (array name, dtype, shape, byte offset) of each array in a segment.
Layout = tuple[tuple[str, str, tuple[int, ...], int], ...]

_ALIGN = 64  # a cache line: every array starts on one
_MIN_BYTES = 1 << 20


def run_directory() -> Path:
    """Where a supervisor's segments and socket go: memory, when the system has a memory file system."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(os.environ.get("TMPDIR", "/tmp"))


class Segment:
    """A segment this process writes arrays into; a new, larger file when they do not fit."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self._directory = directory
        self._prefix = prefix
        self._files = 0
        self._path: Path | None = None
        self._map: mmap.mmap | None = None

    def write(self, arrays: Mapping[str, np.ndarray]) -> tuple[str, Layout]:
        """Copy `arrays` into the segment; the file's name and where each array lies.

        OSError when the file system has no room for them (Docker gives /dev/shm 64 MB unless told).
        """
        layout: list[tuple[str, str, tuple[int, ...], int]] = []
        offset = 0
        for name, array in arrays.items():
            layout.append((name, array.dtype.str, tuple(array.shape), offset))
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
        buffer = self._room(offset)
        for (_, dtype, shape, start), array in zip(layout, arrays.values(), strict=True):
            np.copyto(_view(buffer, dtype, shape, start), array, casting="no")
        assert self._path is not None
        return self._path.name, tuple(layout)

    def _room(self, size: int) -> mmap.mmap:
        if self._map is not None and len(self._map) >= size:
            return self._map
        self.close()
        self._files += 1
        self._path = self._directory / f"{self._prefix}-{self._files}"
        capacity = max(_MIN_BYTES, 1 << (size - 1).bit_length())
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Reserved, not sparse: a full /dev/shm is then an OSError here, not a SIGBUS on a write.
            os.posix_fallocate(fd, 0, capacity)
            self._map = mmap.mmap(fd, capacity)
        except OSError:
            self.close()
            raise
        finally:
            os.close(fd)
        return self._map

    def close(self) -> None:
        """Remove the file; a reader's mapping of it stays valid until the reader drops it."""
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
        # Not mmap.close(): arrays read from it may still be in use; the mapping goes with them.
        self._map = None


class Reader:
    """The other side's segment, mapped once per file it names."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._name = ""
        self._map: mmap.mmap | None = None

    def read(self, name: str, layout: Layout) -> dict[str, np.ndarray]:
        """Views of the arrays (valid until the writer writes again: copy what must outlive that)."""
        if name != self._name or self._map is None:
            with open(self._directory / name, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # read-only views
            self._name = name
        return {array: _view(self._map, dtype, shape, offset) for array, dtype, shape, offset in layout}


def _view(buffer: mmap.mmap, dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
    kind = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(buffer, kind, count, offset).reshape(shape)
