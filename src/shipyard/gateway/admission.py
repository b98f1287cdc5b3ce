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


class TieredAdmission:
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

    async def enter(self, tier: int) -> None:
        if self.inflight < self.max_inflight and not self._heap:
            self.inflight += 1
            return
        if len(self._heap) >= self.max_queue:
            lowest = max(self._heap) if self._heap else None  # max sort key = lowest tier, newest
            if lowest is None or lowest.tier >= tier:
                raise self._shed("The server is at capacity; requests of higher priority are served first.")
            self._heap.remove(lowest)
            heapq.heapify(self._heap)
            lowest.future.set_exception(self._shed("Shed for a request of higher priority; retry shortly."))
        waiter = _Waiter((-tier, next(self._order)), asyncio.get_running_loop().create_future(), tier)
        heapq.heappush(self._heap, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.queue_timeout_s)
        except asyncio.TimeoutError:
            if waiter in self._heap:
                self._heap.remove(waiter)
                heapq.heapify(self._heap)
                raise self._shed(f"Waited {self.queue_timeout_s:g} s for capacity; retry shortly.") from None
            # admitted at the very moment the timer fired: keep the slot
        except asyncio.CancelledError:
            if waiter in self._heap:
                self._heap.remove(waiter)
                heapq.heapify(self._heap)
            elif waiter.future.done() and not waiter.future.exception():
                self.leave()
            raise

    def leave(self) -> None:
        while self._heap:
            waiter = heapq.heappop(self._heap)
            if not waiter.future.done():
                waiter.future.set_result(None)  # the slot passes straight to the waiter
                return
        self.inflight -= 1

    @property
    def waiting(self) -> int:
        return len(self._heap)
