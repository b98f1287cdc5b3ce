"""Graceful shutdown for requests in flight: finish within the grace period, or end cleanly.

When the server is asked to stop, `begin(grace_s)` starts the clock. Requests still generating
when it runs out are interrupted: a stream gets an error event (`server_shutting_down`) and
`[DONE]`, a non-streamed call a 503, and either way what was generated is billed. New requests
that arrive on kept-alive connections meanwhile get 503 + Retry-After. Nothing is cut mid-frame
and nothing is left for the server to cancel with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("shipyard.drain")


class Drain:
    def __init__(self):
        self.draining = False
        self.expired = False
        self._active: set[Callable[[], None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def register(self, interrupt: Callable[[], None]) -> Callable[[], None]:
        """Track an in-flight request; returns the function that forgets it."""
        if self.expired:
            interrupt()
        self._active.add(interrupt)
        return lambda: self._active.discard(interrupt)

    def begin(self, grace_s: float) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: %d requests in flight get %.1f s to finish", len(self._active), grace_s)
        self._timer = asyncio.get_running_loop().call_later(grace_s, self.expire)

    def expire(self) -> None:
        self.expired = True
        if self._active:
            log.warning("grace period over: ending %d requests in flight", len(self._active))
        for interrupt in list(self._active):
            interrupt()

    @property
    def in_flight(self) -> int:
        return len(self._active)
