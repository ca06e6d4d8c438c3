"""The IW-NLL's tasks: how many images each takes, and those finished, kept on disk as each finishes.

A k = 5000 evaluation of the whole test set takes about two hours on 2 CPU cores; interrupted, it
resumes where it stopped. Each task's noise is seeded by its first image, so a resumed evaluation
reports the figures an uninterrupted one does.

The file is JSON lines beside the report (REPORT.partial): first what evaluation it belongs to, then
one line per finished task. A file of another evaluation (another checkpoint, k or subset) is
started afresh; a last line cut short by the interruption is dropped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

# The IW-NLL's unit of work and of progress, at least: at k = 5000, about 10 s of one core.
IMAGES_PER_TASK = 10


def images_per_pass(k: int, batch_decodes: int) -> int:
    return max(1, min(100, batch_decodes // k))


def images_per_task(k: int, batch_decodes: int) -> int:
    return max(IMAGES_PER_TASK, images_per_pass(k, batch_decodes))


def progress_path(report: Path) -> Path:
    return report.with_name(report.name + ".partial")


class FinishedTasks:
    """The tasks that interrupted runs of the same evaluation finished, and this run's as they finish."""

    def __init__(self, path: Path, evaluation: dict[str, Any], *, announce: bool) -> None:
        self.path = path
        self.values: dict[int, torch.Tensor] = {}
        self.earlier_seconds = 0.0  # what the interrupted runs had spent on the evaluation
        header = {"evaluation": evaluation}
        if self._read(header):
            self._file: IO[str] = path.open("a", encoding="utf-8")
        else:
            self._file = path.open("w", encoding="utf-8")
            self._write(header)
        if self.values and announce:
            print(f"vae eval: resuming from {path}: {len(self.values)} tasks done", file=sys.stderr)

    def _read(self, header: dict[str, Any]) -> bool:
        if not self.path.is_file():
            return False
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            if not lines or json.loads(lines[0]) != header:
                return False
        except json.JSONDecodeError:
            return False
        kept = [lines[0]]
        for line in lines[1:]:
            try:
                task = json.loads(line)
            except json.JSONDecodeError:
                break  # the line the interruption cut short, the last one
            self.values[task["start"]] = torch.tensor(task["nll"], dtype=torch.float32)
            self.earlier_seconds = task["seconds"]
            kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        return True

    def pending(self, starts: Sequence[int]) -> list[int]:
        return [start for start in starts if start not in self.values]

    def add(self, start: int, nll: torch.Tensor, seconds: float) -> None:
        """seconds: spent on the evaluation so far, the interrupted runs' included."""
        self.values[start] = nll
        self._write({"start": start, "nll": nll.cpu().tolist(), "seconds": seconds})

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, *, done: bool) -> None:
        """Done: the report holds the figures now, and the file goes."""
        self._file.close()
        if done:
            self.path.unlink()
