"""A request in the batcher's queue: its items, what batches took of them, the outputs that came back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from service.batch_types import ExpiryGroup, Items, Result


class QueuedRequest:
    """One submit's items, handed to batches from `next` on, answered once every slice came back."""

    __slots__ = (
        "admitted",
        "compute",
        "deadline",
        "future",
        "group",
        "items",
        "left",
        "next",
        "pieces",
        "trace",
    )

    def __init__(
        self,
        items: Items,
        deadline: float | None,
        future: asyncio.Future[Result],
        trace: Any,
        group: ExpiryGroup | None,
    ) -> None:
        self.items = items
        self.deadline = deadline
        self.future = future
        self.trace = trace  # opaque to the batcher: what the BatchTracer links the batch to
        self.group = group
        self.admitted = time.perf_counter()
        self.next = 0  # first item not yet handed to a batch
        self.left = len(items)  # items whose outputs have not come back
        self.pieces: list[tuple[np.ndarray, ...]] = []
        self.compute = 0.0

    def counts_expiry(self) -> bool:
        """Whether this request's expiry is one to count (its call's first, when it has parts)."""
        return self.group is None or self.group.first_expiry()

    def deliver(self, first: int, piece: tuple[np.ndarray, ...], seconds: float, now: float) -> float | None:
        """The outputs of its items from `first` on, from a batch that took `seconds`.

        Answers the request once every slice is back; returns the time it waited then, else None.
        """
        self.compute += seconds
        self.left -= len(piece[0])
        if first == 0 and self.left == 0:
            outputs = piece  # the whole request in one batch: no copy
        else:
            self.pieces.append(piece)
            if self.left:
                return None
            outputs = tuple(np.concatenate(parts) for parts in zip(*self.pieces, strict=True))
        waited = now - self.admitted - self.compute
        self.future.set_result(Result(outputs, waited, self.compute))
        return waited


# One slice of a request in a batch: (request, first item, item count).
Slice = tuple[QueuedRequest, int, int]
