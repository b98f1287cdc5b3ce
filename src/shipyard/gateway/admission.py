"""Tiered admission in front of each deployment: a bounded number in flight, a bounded queue.

When the queue is full, an arrival of a higher tier displaces the lowest-tier waiter (which is
shed with 503 + Retry-After); an arrival that outranks nobody is shed itself. Waiters leave in
tier order (oldest first within a tier), and nobody waits longer than `queue_timeout_s`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from shipyard.gateway.errors import Overloaded


@dataclass(order=True)
class _Waiter:
    sort_key: tuple[int, int]
    future: asyncio.Future = field(compare=False)
    tier: int = field(compare=False)
    weight: int = field(compare=False, default=1)


class TieredAdmission:
    """Counts sequences, not calls: a request runs `weight` sequences (prompts × n) and takes
    that many of the `max_inflight` slots (a request larger than all of them runs alone)."""

    def __init__(self, max_inflight: int, max_queue: int, queue_timeout_s: float, retry_after_s: int = 1):
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self._heap: list[_Waiter] = []  # highest tier first, then oldest
        self._order = itertools.count()

    def _shed(self, message: str) -> Overloaded:
        return Overloaded(message, headers={"Retry-After": str(self.retry_after_s)})

    def _fits(self, weight: int) -> bool:
        return self.inflight == 0 or self.inflight + weight <= self.max_inflight

    def _remove(self, waiter: _Waiter) -> None:
        self._heap.remove(waiter)
        heapq.heapify(self._heap)

    async def enter(self, tier: int, weight: int = 1) -> None:
        weight = max(1, min(weight, self.max_inflight))
        if not self._heap and self._fits(weight):
            self.inflight += weight
            return
        if len(self._heap) >= self.max_queue:
            lowest = max(self._heap) if self._heap else None  # max sort key = lowest tier, newest
            if lowest is None or lowest.tier >= tier:
                ahead = "" if lowest is None or lowest.tier == tier else "; requests of higher priority are ahead"
                raise self._shed(f"The server is at capacity: its queue is full ({self.max_queue} waiting)"
                                 f"{ahead}. Retry shortly.")
            self._remove(lowest)
            lowest.future.set_exception(self._shed("Shed for a request of higher priority; retry shortly."))
        waiter = _Waiter((-tier, next(self._order)), asyncio.get_running_loop().create_future(), tier, weight)
        heapq.heappush(self._heap, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.queue_timeout_s)
        except asyncio.TimeoutError:
            if waiter in self._heap:
                self._remove(waiter)
                self._admit_waiters()  # a large waiter leaving may unblock smaller ones behind it
                raise self._shed(f"Waited {self.queue_timeout_s:g} s for capacity; retry shortly.") from None
            # admitted at the very moment the timer fired: keep the slot
        except asyncio.CancelledError:
            if waiter in self._heap:
                self._remove(waiter)
                self._admit_waiters()
            elif waiter.future.done() and not waiter.future.cancelled() and not waiter.future.exception():
                self.leave(weight)
            raise

    def leave(self, weight: int = 1) -> None:
        self.inflight -= max(1, min(weight, self.max_inflight))
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        """Hand freed slots to waiters in order; the head waits until it fits (no starvation)."""
        while self._heap:
            head = self._heap[0]
            if head.future.done():
                heapq.heappop(self._heap)
                continue
            if not self._fits(head.weight):
                return
            heapq.heappop(self._heap)
            self.inflight += head.weight
            head.future.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._heap)
