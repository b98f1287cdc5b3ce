"""What keeps a deployment answering when replicas fail: circuit breakers and retry backoff.

A breaker opens after `failures` failures within `window_s` (the replica then gets no traffic),
lets one probe through after `cooldown_s` (half-open), and closes on the probe's success. Retries
wait with exponential backoff and full jitter, at least what the upstream's Retry-After asked, and
only ever before a first token has gone to the client (the routed stream sees to that).
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class CircuitBreaker:
    failures: int = 5
    window_s: float = 30.0
    cooldown_s: float = 10.0
    clock: callable = time.monotonic
    state: str = CLOSED
    _recent: deque = field(default_factory=deque)
    _opened_at: float = 0.0
    _probing: bool = False

    def allows(self) -> bool:
        """May a request go to this replica now? (Half-open: exactly one probe at a time.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() - self._opened_at >= self.cooldown_s:
            self.state, self._probing = HALF_OPEN, False
        if self.state == HALF_OPEN and not self._probing:
            return True
        return False

    def started(self) -> None:
        if self.state == HALF_OPEN:
            self._probing = True

    def success(self) -> None:
        if self.state != CLOSED:
            self.state, self._probing = CLOSED, False
            self._recent.clear()

    def failure(self) -> None:
        now = self.clock()
        if self.state == HALF_OPEN:
            self._open(now)
            return
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.failures:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state, self._opened_at, self._probing = OPEN, now, False
        self._recent.clear()


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.05
    max_s: float = 2.0

    def delay(self, attempt: int, retry_after_s: float = 0.0) -> float:
        """Full jitter (AWS's "exponential backoff and jitter"), never under Retry-After."""
        ceiling = min(self.max_s, self.base_s * (2 ** attempt))
        return max(retry_after_s, random.uniform(0, ceiling))
