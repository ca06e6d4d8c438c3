"""Arrays through shared-memory segments: exact round trips, growth into a new file, aligned starts, and
the segments' directories of supervisors that died removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from service.shared_arrays import Reader, Segment
from service.workers import EXECUTOR_PREFIX, remove_stale_directories


def test_arrays_of_every_dtype_come_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "latents": rng.standard_normal((5, 3, 4, 4)).astype(np.float32),
        "labels": np.arange(5, dtype=np.int64),
        "images": rng.integers(0, 255, (5, 1, 28, 28), dtype=np.uint8),
        "half": rng.standard_normal((5, 7)).astype(np.float16),
        "none": np.zeros((0, 16), np.float32),
    }
    segment = Segment(tmp_path, "in-1")
    name, layout = segment.write(arrays)
    read = Reader(tmp_path).read(name, layout)
    assert list(read) == list(arrays)
    for key, array in arrays.items():
        assert read[key].dtype == array.dtype and read[key].shape == array.shape
        np.testing.assert_array_equal(read[key], array)
    # Every array starts on a cache line, whatever the sizes before it.
    assert all(offset % 64 == 0 for *_, offset in layout)


def test_a_batch_too_large_moves_to_a_new_file_and_the_old_one_goes(tmp_path: Path) -> None:
    segment = Segment(tmp_path, "in-2")
    reader = Reader(tmp_path)
    small, layout = segment.write({"x": np.ones(10, np.float32)})
    kept = reader.read(small, layout)["x"]
    large = np.arange(1 << 20, dtype=np.float32)  # 4 MiB, past the first file's 1 MiB
    grown, layout = segment.write({"x": large})
    assert grown != small
    assert not (tmp_path / small).exists() and (tmp_path / grown).exists()
    np.testing.assert_array_equal(reader.read(grown, layout)["x"], large)
    # A view of the old file stays readable after its file is removed.
    np.testing.assert_array_equal(kept, np.ones(10, np.float32))
    segment.close()
    assert not list(tmp_path.iterdir())


def test_a_reader_sees_the_writers_next_batch_in_the_same_file(tmp_path: Path) -> None:
    segment = Segment(tmp_path, "in-3")
    reader = Reader(tmp_path)
    first, layout = segment.write({"x": np.zeros(4, np.float32)})
    view = reader.read(first, layout)["x"]
    second, _ = segment.write({"x": np.full(4, 7.0, np.float32)})
    assert second == first
    # Views are of the shared bytes: what must outlive the next write has to be copied.
    np.testing.assert_array_equal(view, np.full(4, 7.0, np.float32))


def test_the_directories_of_supervisors_that_died_are_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])  # a pid that no longer runs
    gone.wait()
    dead = tmp_path / f"{EXECUTOR_PREFIX}{gone.pid}-abc"
    alive = tmp_path / f"{EXECUTOR_PREFIX}{os.getpid()}-def"
    other = tmp_path / "something-else"
    for directory in (dead, alive, other):
        directory.mkdir()
        (directory / "in-1-1").write_bytes(b"x")
    remove_stale_directories(tmp_path)
    assert not dead.exists() and alive.exists() and other.exists()
