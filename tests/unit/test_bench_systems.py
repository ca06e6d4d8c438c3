"""The suite's server processes: CPU is read over the whole process tree (Triton runs in a child), and
pinning reaches every thread of it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from benchmarks import processes, systems

BUSY_CHILD = (
    "import time; end = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(60)"
)


def test_cpu_seconds_counts_the_children_of_the_server_process(tmp_path: Path) -> None:
    # The parent only waits; all the CPU is spent in its child, as with pytriton and tritonserver.
    command = ["sh", "-c", f'"{sys.executable}" -c "$0" & wait', BUSY_CHILD]
    server = systems.start("parent", command, lambda: True, target="", metrics_url=None, log=tmp_path / "log")
    try:
        deadline = time.monotonic() + 30
        while (spent := server.cpu_seconds()) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.3 <= spent < 5
        assert len(processes.process_tree(server.process.pid)) == 2
    finally:
        for child in processes.process_tree(server.process.pid)[1:]:
            os.kill(child, signal.SIGKILL)  # sh does not pass SIGTERM on to its sleeping child
        server.stop(grace=1)


# The child's main thread starts four threads that wait, then waits itself.
THREADED_CHILD = (
    "import threading\nstop = threading.Event()\n"
    "[threading.Thread(target=stop.wait).start() for _ in range(4)]\nstop.wait()"
)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning to a subset needs two CPUs")
def test_pinning_a_server_reaches_every_thread_of_every_process(tmp_path: Path) -> None:
    command = ["sh", "-c", f'"{sys.executable}" -c "$0" & wait', THREADED_CHILD]
    server = systems.start("parent", command, lambda: True, target="", metrics_url=None, log=tmp_path / "log")
    server_cpus, client_cpus = processes.split_cpus()
    assert server_cpus.isdisjoint(client_cpus) and len(server_cpus) == 1
    try:
        tree = processes.process_tree(server.process.pid)
        deadline = time.monotonic() + 30
        while len(tree) < 2 or len(threads(tree[1])) < 5:
            assert time.monotonic() < deadline, "the child never started its threads"
            time.sleep(0.05)
            tree = processes.process_tree(server.process.pid)
        server.pin(server_cpus)
        assert {frozenset(os.sched_getaffinity(t)) for pid in tree for t in threads(pid)} == {server_cpus}
        server.pin(server_cpus | client_cpus)  # and back
        assert {frozenset(os.sched_getaffinity(t)) for t in threads(tree[1])} == {server_cpus | client_cpus}
    finally:
        for child in processes.process_tree(server.process.pid)[1:]:
            os.kill(child, signal.SIGKILL)
        server.stop(grace=1)


def threads(pid: int) -> list[int]:
    return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
