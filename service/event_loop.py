"""The event loop a server process runs on: uvloop by default, or the standard library's asyncio.

uvloop costs about 5% less server CPU per request than asyncio's loop under grpc.aio
(docs/benchmarks.md); the benchmark's echo server runs on the same loop as the service it bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

EVENT_LOOPS = ("uvloop", "asyncio")


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run `main` to completion on a new event loop of the kind named (one of EVENT_LOOPS)."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    elif event_loop == "asyncio":
        asyncio.run(main)
    else:
        raise ValueError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, got {event_loop!r}")
