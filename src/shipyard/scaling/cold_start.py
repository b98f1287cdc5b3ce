"""Scale to zero: the bounded buffer that holds requests while a deployment's first replica starts.

A deployment with `min_replicas: 0` has no replica after its idle delay. A request that finds no
available replica waits here: it wakes the autoscaler (which decides at once instead of at its
next tick), and is released as soon as a replica is ready. A request past the buffer's capacity,
or one still waiting at the wait limit, gets `EngineOverloadedError`: 503 with a Retry-After of the
cold start's expected remainder. (The routed deployment's first-token deadline starts once a
replica is there: a model that loads for minutes is bounded by this limit alone.) Every held
request counts as waiting load, so the policy starts enough replicas for all of them.

A development and staging setting: the first request after an idle spell pays the cold start.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from shipyard.engines.errors import EngineOverloadedError

POLL_S = 0.05  # how often a held request looks for a ready replica (a restart makes one ready too)


class ColdStartBuffer:
    def __init__(self, name: str, capacity: int, timeout_s: float, available: Callable[[], bool],
                 wake: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.available = available  # is any replica taking requests
        self.wake = wake  # ask the autoscaler for a decision now
        self.clock = clock
        self.waiting = 0
        self.served = 0  # requests held, then released to a replica
        self.rejected = 0  # turned away: buffer full, or waited past the limit
        self.last_cold_start_s: float | None = None  # from the first held request to a ready replica
        self._since: float | None = None  # when the current cold start's first request arrived

    def _retry_after(self) -> float:
        """What a turned-away client is told: the rest of a cold start as long as the last one."""
        if self._since is None or self.last_cold_start_s is None:
            return 1.0
        return max(1.0, self.last_cold_start_s - (self.clock() - self._since))

    async def __call__(self, deadline: float) -> None:
        """Hold until a replica is available, or raise EngineOverloadedError (503 + Retry-After)."""
        if self.available():
            return
        if self.waiting >= self.capacity:
            self.rejected += 1
            raise EngineOverloadedError(
                f"'{self.name}' is scaled to zero and starting a replica; its cold-start buffer of "
                f"{self.capacity} requests is full.", retry_after_s=math.ceil(self._retry_after()))
        self.waiting += 1
        if self._since is None:
            self._since = self.clock()
        self.wake()
        arrived = self.clock()
        limit = min(arrived + self.timeout_s, deadline)
        try:
            while not self.available():
                if self.clock() >= limit:
                    self.rejected += 1
                    raise EngineOverloadedError(
                        f"'{self.name}' is scaled to zero and no replica was ready after "
                        f"{self.clock() - arrived:.1f} s of waiting.", retry_after_s=math.ceil(self._retry_after()))
                await asyncio.sleep(POLL_S)
            if self._since is not None:
                self.last_cold_start_s = self.clock() - self._since
                self._since = None
            self.served += 1
        finally:
            self.waiting -= 1
            if self.waiting == 0 and not self.available():
                self._since = None  # everyone gave up: the next request starts a fresh count
