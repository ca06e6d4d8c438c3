"""Admission by time: a request joins a batcher's queue only if its items can run before it must end.

A queue bounded in items (`--max-queue-items`) refuses a valid burst that a fast device would
serve in milliseconds and admits, on a slow one, work that cannot finish in time. So the bound
that matters is time: the work queued ahead of a request, at the measured cost per item, is the
wait it would have. A request is refused when

- that wait and its own items' time exceed its deadline (the caller's, capped by the server's
  --max-deadline-seconds): Expired, answered DEADLINE_EXCEEDED at once instead of after the
  wait, with nothing computed;
- that wait exceeds --max-queue-delay-ms, the most queueing an operator accepts: QueueFull,
  RESOURCE_EXHAUSTED. Its own items do not count here: a long request (a Score of many draws)
  is bounded by its deadline.

The item bound stays as a backstop on memory, and beside it a bound in bytes (`--max-queue-bytes`):
65,536 MNIST images are 205 MB, but 65,536 RGB 512x512 images would be 206 GB. A batcher serves
items of one shape (service/buckets.py), so its queued bytes are its queued items times the bytes of
one. The cost per item is the warm-up's time for a full
batch, then a moving average of the full batches that ran: a busy device or a noisy neighbour
raises it, and admission follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service.batch_types import Expired, QueueFull

# Weight of each full batch in the moving average of the cost per item: about the last 20 batches.
_SMOOTHING = 0.05


class Admission:
    """One batcher's admission: item backstop, time bound and deadline, from a measured cost per item."""

    def __init__(
        self,
        name: str,
        *,
        max_queue_items: int,
        max_queue_delay_s: float,
        max_queue_bytes: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._name = name
        self.max_queue_items = max_queue_items
        self.max_queue_bytes = max_queue_bytes  # 0: no bound in bytes
        self._max_delay_s = max_queue_delay_s
        self._clock = clock
        self.item_seconds = 0.0  # cost per item in a full batch; 0 until measured: admits by items only

    def measured(self, items: int, seconds: float) -> None:
        """A full batch of `items` took `seconds`: the cost per item moves towards it."""
        cost = seconds / items
        self.item_seconds = (
            cost if not self.item_seconds else self.item_seconds + _SMOOTHING * (cost - self.item_seconds)
        )

    def wait_seconds(self, ahead: int, count: int) -> float:
        """How long a request of `count` items behind `ahead` queued or running items would take."""
        return (ahead + count) * self.item_seconds

    def check_items(self, queued: int, count: int, item_bytes: int = 0) -> None:
        """QueueFull when `count` more items beside `queued` waiting ones would pass a memory backstop.

        `item_bytes`: the bytes of one item; every item of a batcher's queue has the same shape.
        """
        if queued + count > self.max_queue_items:
            raise QueueFull(
                f"{self._name}: queue full ({queued} of {self.max_queue_items} items waiting, "
                f"this request adds {count}); retry with backoff"
            )
        if self.max_queue_bytes and (queued + count) * item_bytes > self.max_queue_bytes:
            raise QueueFull(
                f"{self._name}: queue full ({queued * item_bytes} of {self.max_queue_bytes} bytes waiting, "
                f"this request adds {count * item_bytes}); retry with backoff"
            )

    def check_time(self, ahead: int, count: int, deadline: float | None) -> None:
        """Expired or QueueFull when `count` items behind `ahead` queued or running would take too long."""
        if not self.item_seconds:
            return
        wait = self.wait_seconds(ahead, count)
        if deadline is not None and wait > deadline - self._clock():
            raise Expired(
                f"deadline would pass while queued: {ahead} items ahead and {count} of its own take about "
                f"{wait * 1e3:.0f} ms here; retry with a longer deadline, fewer items, or elsewhere"
            )
        queued = self.wait_seconds(ahead, 0)
        if self._max_delay_s and queued > self._max_delay_s:
            raise QueueFull(
                f"{self._name}: about {queued * 1e3:.0f} ms of work is queued ahead of this request, "
                f"over the server's bound of {self._max_delay_s * 1e3:.0f} ms; retry with backoff"
            )
