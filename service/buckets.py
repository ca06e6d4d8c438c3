"""Bucketing by shape: one graph's batchers, one per item shape, so a batch only joins items of one shape.

A model of one image size has one shape per graph, and one batcher. A model that takes any size
(service/loading.py warms one small size) gets a batcher per shape on demand: the queue of one
never mixes shapes, so every batch is one contiguous array, and each batcher's admission measures
the cost per item of its own shape (a 512x512 image costs 64 times a 64x64 one, which one moving
average over both would get wrong for both). The shapes other than the warmed one are bounded in
number (MAX_SHAPES, least recently used first out: an idle one when there is one); an evicted
batcher lets its admitted requests finish, then stops its thread. A new shape's first batches are
not warmed, and its admission counts items until its first full batch has been timed.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from service.batch_types import Items, values_of
from service.batcher import Batcher

# Shapes served at once besides the warmed one: each has a worker thread and a queue.
MAX_SHAPES = 8


def item_shape(items: Items) -> tuple[int, ...]:
    """The shape of one item: what a batch's items must share."""
    return tuple(values_of(items).shape[1:])


class Buckets:
    """A graph's batcher for the warmed shape, and for other shapes (when `make` is given) on demand."""

    def __init__(
        self,
        warmed: Batcher,
        shape: tuple[int, ...],
        make: Callable[[tuple[int, ...]], Batcher] | None = None,
        limit: int = MAX_SHAPES,
    ) -> None:
        self.warmed = warmed
        self._shape = shape
        self._make = make
        self._limit = limit
        self._others: OrderedDict[tuple[int, ...], Batcher] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def __call__(self, items: Items) -> Batcher:
        """The batcher for items of this shape (a fixed-size model's codec has checked the shape)."""
        shape = item_shape(items)
        if self._make is None or shape == self._shape:
            return self.warmed
        batcher = self._others.pop(shape, None)
        if batcher is None:
            if len(self._others) >= self._limit:
                self._evict()
            batcher = self._make(shape)
        self._others[shape] = batcher  # now the most recently used
        return batcher

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Every shape with a batcher now, the warmed one first."""
        return [self._shape, *self._others]

    def _evict(self) -> None:
        idle = [shape for shape, batcher in self._others.items() if batcher.idle]
        shape = idle[0] if idle else next(iter(self._others))
        task = asyncio.ensure_future(self._others.pop(shape).close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        batchers = [self.warmed, *self._others.values()]
        self._others.clear()
        await asyncio.gather(*(batcher.close() for batcher in batchers), *self._closing)
