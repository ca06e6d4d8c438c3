"""Processes from /proc (Linux): a process's tree, the CPU time it has used, and the cores it may run on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Set
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """pid and its descendants that are still running."""
    tree, index = [pid], 0
    while index < len(tree):
        for task in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the task ended meanwhile
                tree.extend(int(child) for child in task.read_text().split())
        index += 1
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far; 0 once it has ended."""
    try:
        # utime and stime are stat(5) fields 14 and 15: indices 11 and 12 once the pid and the
        # parenthesised command name (which may hold spaces) are split off.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # ended meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def pin(pids: Iterable[int], cpus: Set[int]) -> None:
    """Let every thread of these processes run only on `cpus`; threads they start later inherit it.

    Affinity belongs to a thread, not a process: the threads gRPC and onnxruntime have already
    started are pinned one by one.
    """
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):  # the thread or the process ended meanwhile
                os.sched_setaffinity(int(task.name), cpus)


def split_cpus() -> tuple[frozenset[int], frozenset[int]]:
    """(server's CPU, client's CPUs): the first CPU this process may use, and all the others."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise ValueError(f"pinning needs two CPUs, this process may use {allowed}: --modes unpinned")
    return frozenset(allowed[:1]), frozenset(allowed[1:])
