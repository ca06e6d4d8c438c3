"""The suite's server processes: CPU is read over the whole process tree, as Triton runs in a child."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from benchmarks import systems

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
        assert len(systems.process_tree(server.process.pid)) == 2
    finally:
        for child in systems.process_tree(server.process.pid)[1:]:
            os.kill(child, signal.SIGKILL)  # sh does not pass SIGTERM on to its sleeping child
        server.stop(grace=1)
