"""One timer for a whole stream's timeouts, instead of one per await.

`asyncio.timeout()` around every read of a stream arms and disarms a timer per read (under
uvloop, a libuv timer each time): several per request, a measurable share of a gateway's CPU.
A `Watchdog` arms one timer for the stream and lets each read merely note when it ended; when
the timer fires it checks whether the limit has really passed since the last read (idle) or the
start, and only then cancels the task that is waiting inside `guard()`, which raises
TimeoutError there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Watchdog:
    def __init__(self, limit_s: float, idle: bool = True):
        self.limit_s = limit_s  # seconds since the last touch (idle) or since the start (not idle)
        self.idle = idle
        self._since = time.monotonic()
        self._waiter: asyncio.Task | None = None
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None
        self._closed = False

    def _arm(self) -> None:
        if self._handle is None and not self._closed:
            delay = self._since + self.limit_s - time.monotonic()
            self._handle = asyncio.get_running_loop().call_later(max(0.0, delay), self._fire)

    def _fire(self) -> None:
        self._handle = None
        left = self._since + self.limit_s - time.monotonic()
        if left > 0.0005:  # a read ended meanwhile: look again when the new limit would pass
            self._arm()
            return
        self._expired = True
        if self._waiter is not None:
            self._waiter.cancel()

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`; TimeoutError if the limit passes first."""
        if self._expired:
            raise TimeoutError
        self._arm()
        task = asyncio.current_task()
        self._waiter = task
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._expired and task.uncancel() == 0:  # our cancel, not anyone else's
                raise TimeoutError from None
            raise
        finally:
            self._waiter = None
            if self.idle:
                self._since = time.monotonic()

    def close(self) -> None:
        """The stream is over: no timer left behind (a pending one would hold this until it fires)."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
