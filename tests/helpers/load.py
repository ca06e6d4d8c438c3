"""Closed-loop load from asyncio workers, with a tally of every call's status code and latency."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np


@dataclass
class Tally:
    """Outcomes of calls: counts, latencies (seconds) and the first message of each status code."""

    codes: Counter[str] = field(default_factory=Counter)
    latencies: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    messages: dict[str, str] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)  # "CODE: message" of calls that failed
    items: int = 0

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    def failed(self, *allowed: str) -> int:
        """Calls that ended with a code other than OK and `allowed`."""
        return sum(count for code, count in self.codes.items() if code not in ("OK", *allowed))

    def percentile(self, code: str, q: float) -> float:
        return float(np.percentile(self.latencies[code], q)) if self.latencies[code] else float("nan")

    def summary(self) -> str:
        parts = [f"{code}={count}" for code, count in sorted(self.codes.items())]
        for code in sorted(self.latencies):
            p50, p99 = self.percentile(code, 50) * 1e3, self.percentile(code, 99) * 1e3
            parts.append(f"{code} p50={p50:.1f}ms p99={p99:.1f}ms")
        return ", ".join(parts) + (f"; first messages: {self.messages}" if self.messages else "")


async def timed_call(call: Callable[[], Awaitable[Any]], tally: Tally, items: int = 1) -> str:
    """Await one call and record its outcome; returns the status code name."""
    started = time.perf_counter()
    try:
        await call()
        code = "OK"
        tally.items += items
    except grpc.aio.AioRpcError as error:
        code = error.code().name
        tally.messages.setdefault(code, error.details() or "")
        tally.outcomes[f"{code}: {error.details()}"] += 1
    tally.codes[code] += 1
    tally.latencies[code].append(time.perf_counter() - started)
    return code


async def closed_loop(
    call: Callable[[], Awaitable[Any]],
    *,
    workers: int,
    until: Callable[[], bool],
    tally: Tally,
    items: int = 1,
    stop_on: frozenset[str] = frozenset(),
) -> None:
    """`workers` callers, each sending its next call when the previous one is answered, until `until()`.

    A worker also stops after a call ends with a code in `stop_on` (a client told to go elsewhere).
    """

    async def worker() -> None:
        while not until():
            if await timed_call(call, tally, items) in stop_on:
                return

    await asyncio.gather(*(worker() for _ in range(workers)))
