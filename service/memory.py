"""Memory back to the system after large messages.

A request is read, parsed and its tensor copied a few times before it is checked; glibc keeps the
freed pages for reuse, spread over its per-thread arenas, so a burst of large requests (valid or
not) left the process as large as its peak, and a second burst grew it again. After a call that
moved large messages, malloc_trim(0) returns the free pages, at most once a second, off the
event loop (docs/reliability.md measures it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

# Calls whose messages total less leave too little behind to be worth a trim.
TRIM_AFTER_BYTES = 1 << 20
TRIM_INTERVAL_S = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: its allocator does as it does
        return None
    return trim


class Trimmer:
    """Schedules a malloc_trim after calls that moved large messages."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._pending = False

    def after(self, size: int) -> None:
        """A call moved `size` bytes of messages (called on the event loop)."""
        if size < TRIM_AFTER_BYTES or self._pending or self._trim is None:
            return
        self._pending = True
        asyncio.get_running_loop().call_later(TRIM_INTERVAL_S, self._start)

    def _start(self) -> None:
        self._pending = False
        # A failed call's exception, its traceback and the frames holding the request are a cycle,
        # which only the collector frees; a long call's may have aged into the oldest generation.
        gc.collect()
        if self._trim is not None:
            asyncio.get_running_loop().run_in_executor(None, self._trim, 0)
