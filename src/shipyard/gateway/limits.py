"""Rate limits, concurrency caps and budgets, checked and taken all-or-nothing.

A request names its buckets (per key, per tenant, per deployment): requests/minute and
tokens/minute as sliding-window logs (never more than the limit in any 60 seconds, bursts
included), concurrent requests as counters, spend per day/month as counters. `acquire` checks every
bucket and takes from all of them, or from none; `settle` puts back what was reserved but
not used (tokens, cost) and releases the concurrency slot.

In-process by default (here). With Redis (gateway/redis_limits.py), one Lua script does the
check-and-take atomically for every gateway process, so limits are exact however many replicas
share it.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from shipyard.gateway.errors import RateLimited

RATE, CONCURRENCY, BUDGET = "rate", "conc", "budget"
MINUTE_MS = 60_000
MICRO = 1_000_000_000  # budgets are counted in nano-dollars, as integers


@dataclass
class Bucket:
    key: str  # storage key, unique per scope and limit
    kind: str  # RATE | CONCURRENCY | BUDGET
    limit: float
    cost: float
    window_ms: int  # RATE: refill window; BUDGET: time left in the period
    label: str  # what a refusal names: "requests per minute for this API key"
    metric: str  # "requests" | "tokens" | "concurrent" | "budget"
    scope: str  # "key" | "tenant" | "deployment"


@dataclass
class Reservation:
    buckets: list[Bucket]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    remaining: list[float] = field(default_factory=list)
    reset_ms: list[float] = field(default_factory=list)
    settled: bool = False

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, for the tightest requests and tokens limits."""
        out: dict[str, str] = {}
        for metric, suffix in (("requests", "requests"), ("tokens", "tokens")):
            best = None
            for i, bucket in enumerate(self.buckets):
                if bucket.metric != metric or i >= len(self.remaining):
                    continue
                ratio = self.remaining[i] / bucket.limit if bucket.limit else 0
                if best is None or ratio < best[0]:
                    best = (ratio, bucket, self.remaining[i], self.reset_ms[i])
            if best is not None:
                _, bucket, remaining, reset_ms = best
                out[f"x-ratelimit-limit-{suffix}"] = str(int(bucket.limit))
                out[f"x-ratelimit-remaining-{suffix}"] = str(max(0, int(remaining)))
                out[f"x-ratelimit-reset-{suffix}"] = f"{max(reset_ms, 0) / 1000:.3f}s"
        return out


def refusal(bucket: Bucket, retry_after_ms: float) -> RateLimited:
    retry_s = max(1, math.ceil(retry_after_ms / 1000))
    headers = {"Retry-After": str(retry_s)}
    if bucket.metric in ("requests", "tokens"):  # the limit that refused, in OpenAI's header names
        headers.update({f"x-ratelimit-limit-{bucket.metric}": str(int(bucket.limit)),
                        f"x-ratelimit-remaining-{bucket.metric}": "0",
                        f"x-ratelimit-reset-{bucket.metric}": f"{max(retry_after_ms, 0) / 1000:.3f}s"})
    if bucket.kind == BUDGET:
        message = f"Budget exceeded: the {bucket.label} is spent. It renews in {retry_s} s."
    elif bucket.kind == CONCURRENCY:
        message = f"Too many concurrent requests: limit of {int(bucket.limit)} {bucket.label}."
    elif bucket.cost > bucket.limit:
        message = (f"This request needs {int(bucket.cost)} {bucket.metric}, more than the limit of "
                   f"{int(bucket.limit)} {bucket.label}.")
    else:
        message = f"Rate limit reached: {int(bucket.limit)} {bucket.label}. Retry in {retry_s} s."
    return RateLimited(message, headers=headers)


class _Window:
    """A sliding-window log: (time ms, amount, reservation id) entries of the last window."""

    def __init__(self):
        self.entries: deque[list] = deque()
        self.by_id: dict[str, list] = {}  # settle finds its entry without a scan
        self.total = 0.0

    def add(self, now: float, amount: float, reservation_id: str) -> None:
        entry = [now, amount, reservation_id]
        self.entries.append(entry)
        self.by_id[reservation_id] = entry
        self.total += amount

    def adjust(self, reservation_id: str, delta: float) -> None:
        entry = self.by_id.get(reservation_id)
        if entry is not None:
            entry[1] += delta
            self.total += delta

    def expire(self, now: float, window_ms: float) -> None:
        while self.entries and self.entries[0][0] <= now - window_ms:
            entry = self.entries.popleft()
            self.total -= entry[1]
            self.by_id.pop(entry[2], None)

    def retry_after(self, now: float, window_ms: float, limit: float, cost: float) -> float:
        """When enough entries will have left the window for `cost` to fit."""
        total = self.total
        for ts, amount, _ in self.entries:
            total -= amount
            if total + cost <= limit:
                return ts + window_ms - now
        return window_ms

    def reset_ms(self, now: float, window_ms: float) -> float:
        return self.entries[0][0] + window_ms - now if self.entries else 0.0


class InProcessLimiter:
    """Exact within one process (the event loop runs each call without interleaving)."""

    async def close(self) -> None:
        pass

    def __init__(self):
        self._windows: dict[str, _Window] = {}
        self._counters: dict[str, float] = {}
        self._budget_expiry: dict[str, float] = {}

    async def acquire(self, buckets: list[Bucket], fence: tuple[str, int] | None = None) -> Reservation:
        # No fence without Redis: principals are always read fresh then.
        now = time.time() * 1000
        for bucket in buckets:
            if bucket.kind == RATE:
                window = self._windows.setdefault(bucket.key, _Window())
                window.expire(now, bucket.window_ms)
                if window.total + bucket.cost > bucket.limit:
                    raise refusal(bucket, window.retry_after(now, bucket.window_ms, bucket.limit, bucket.cost))
            else:
                if bucket.kind == BUDGET and self._budget_expiry.get(bucket.key, math.inf) < now:
                    self._counters.pop(bucket.key, None)
                if self._counters.get(bucket.key, 0.0) + bucket.cost > bucket.limit:
                    raise refusal(bucket, bucket.window_ms if bucket.kind == BUDGET else 1000)
        reservation = Reservation(buckets)
        for bucket in buckets:
            if bucket.kind == RATE:
                window = self._windows[bucket.key]
                window.add(now, bucket.cost, reservation.id)
                reservation.remaining.append(bucket.limit - window.total)
                reservation.reset_ms.append(window.reset_ms(now, bucket.window_ms))
            else:
                used = self._counters.get(bucket.key, 0.0) + bucket.cost
                self._counters[bucket.key] = used
                if bucket.kind == BUDGET:
                    self._budget_expiry[bucket.key] = now + bucket.window_ms
                reservation.remaining.append(bucket.limit - used)
                reservation.reset_ms.append(bucket.window_ms if bucket.kind == BUDGET else 0)
        return reservation

    async def settle(self, reservation: Reservation, actual: dict[str, float]) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        for bucket in reservation.buckets:
            if bucket.kind == CONCURRENCY:
                self._counters[bucket.key] = max(0.0, self._counters.get(bucket.key, 0.0) - bucket.cost)
            elif bucket.metric in actual:
                delta = actual[bucket.metric] - bucket.cost
                if bucket.kind == RATE:
                    if bucket.key in self._windows:
                        self._windows[bucket.key].adjust(reservation.id, delta)
                elif bucket.kind == BUDGET:
                    self._counters[bucket.key] = self._counters.get(bucket.key, 0.0) + delta
