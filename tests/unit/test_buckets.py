"""service/buckets.py: one batcher per item shape, made on demand, bounded in number."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from service.batch_types import Items, Labelled
from service.batcher import Batcher
from service.buckets import Buckets, item_shape
from service.metrics import Metrics


def _batcher(name: str) -> Batcher:
    def run(items: Items) -> Sequence[np.ndarray]:
        values = items.values if isinstance(items, Labelled) else items
        return (values.reshape(len(values), -1).sum(axis=1),)

    return Batcher(
        run,
        max_batch_items=4,
        max_delay_s=0.0,
        max_queue_items=16,
        observer=Metrics().graph("encoder"),
        name=name,
    )


def test_items_of_one_shape_share_a_batcher_and_others_get_their_own_up_to_the_limit() -> None:
    async def scenario() -> None:
        made: list[tuple[int, ...]] = []

        def make(shape: tuple[int, ...]) -> Batcher:
            made.append(shape)
            return _batcher(str(shape))

        warmed = _batcher("warmed")
        buckets = Buckets(warmed, (3, 8, 8), make, limit=2)
        assert buckets(np.zeros((2, 3, 8, 8), np.float32)) is warmed
        small = buckets(np.zeros((1, 3, 8, 16), np.float32))
        assert buckets(np.zeros((5, 3, 8, 16), np.float32)) is small  # the batch size is not the shape
        result = await small.submit(np.ones((2, 3, 8, 16), np.float32))
        assert result.outputs[0].tolist() == [384.0, 384.0]
        buckets(np.zeros((1, 3, 16, 8), np.float32))
        buckets(np.zeros((1, 3, 16, 16), np.float32))  # a third other shape: the oldest is closed
        assert buckets.shapes == [(3, 8, 8), (3, 16, 8), (3, 16, 16)]
        assert made == [(3, 8, 16), (3, 16, 8), (3, 16, 16)]
        await buckets.close()

    asyncio.run(scenario())


def test_a_fixed_size_models_buckets_are_its_one_batcher() -> None:
    async def scenario() -> None:
        warmed = _batcher("warmed")
        buckets = Buckets(warmed, (1, 28, 28))
        assert buckets(Labelled(np.zeros((1, 1, 28, 28), np.float32), np.zeros(1, np.int64))) is warmed
        assert item_shape(np.zeros((4, 8), np.float32)) == (8,)
        await buckets.close()

    asyncio.run(scenario())
