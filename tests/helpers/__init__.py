"""Helpers for tests that drive real servers (in this process or as `vae serve`), balancers, certificates."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# The `vae` command as a user runs it, in this interpreter's environment.
VAE = [sys.executable, "-m", "vae_cli"]


def vae(*args: str | Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `vae ARGS...` to the end; with `check`, fail on a non-zero exit, showing its stderr."""
    result = subprocess.run([*VAE, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def wait_until(condition: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.05) -> float:
    """Poll `condition` until it holds; return the seconds it took, or fail naming `what`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started
