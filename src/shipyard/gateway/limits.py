"""Rate limits, concurrency caps and budgets, checked and taken all-or-nothing.

A request names its buckets (per key, per tenant, per deployment): requests/minute and
tokens/minute as sliding-window logs (never more than the limit in any 60 seconds, bursts
included), concurrent requests as counters, spend per day/month as counters. `acquire` checks every
bucket and takes from all of them, or from none; `settle` puts back what was reserved but
not used (tokens, cost) and releases the concurrency slot.

In-process by default. With Redis, one Lua script does the check-and-take atomically for every
gateway process, so limits are exact however many replicas share it; there is no local
pre-check that could let traffic through. When Redis cannot be reached the limiter fails open
(admits, with a warning) or closed (503), as configured.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from shipyard.gateway.errors import LimiterUnavailable, RateLimited, StaleCredentials

log = logging.getLogger("shipyard.limits")

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


# Rate buckets: a sorted set of reservation ids scored by time (KEY), their amounts in a hash
# (KEY:amt) and the window's running total (KEY:sum).
_EXPIRE = """
local function expire(key, now, window)
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', now - window)
  if #old > 0 then
    local amounts = redis.call('HMGET', key .. ':amt', unpack(old))
    local freed = 0
    for j = 1, #old do freed = freed + (tonumber(amounts[j]) or 0) end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    redis.call('HDEL', key .. ':amt', unpack(old))
    redis.call('INCRBYFLOAT', key .. ':sum', -freed)
  end
  return tonumber(redis.call('GET', key .. ':sum') or '0')
end
"""

# ARGV[3] is the fence: when not '', KEYS[#KEYS] holds the key's generation, which must equal it
# (a revoke or rotation elsewhere bumped it): {2} then, and nothing is taken.
_ACQUIRE = _EXPIRE + """
local now, id, fence = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local n = #KEYS
if fence ~= '' then
  local current = redis.call('GET', KEYS[n])
  if current and tonumber(current) ~= tonumber(fence) then return {2} end
  n = n - 1
end
local state = {}
for i = 1, n do
  local b = 3 + (i - 1) * 4
  local kind, limit, cost, window = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'rate' then
    local total = expire(KEYS[i], now, window)
    if total + cost > limit then
      -- the earliest time enough of the window has expired for this request to fit
      local entries = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
      local retry = window
      for j = 1, #entries, 2 do
        total = total - (tonumber(redis.call('HGET', KEYS[i] .. ':amt', entries[j])) or 0)
        if total + cost <= limit then retry = tonumber(entries[j + 1]) + window - now; break end
      end
      return {0, i, tostring(retry)}
    end
    state[i] = total
  else
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    if used + cost > limit then
      if kind == 'budget' then return {0, i, tostring(window)} end
      return {0, i, '1000'}
    end
    state[i] = used
  end
end
local out = {1}
for i = 1, n do
  local b = 3 + (i - 1) * 4
  local kind, limit, cost, window = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'rate' then
    redis.call('ZADD', KEYS[i], now, id)
    redis.call('HSET', KEYS[i] .. ':amt', id, cost)
    redis.call('INCRBYFLOAT', KEYS[i] .. ':sum', cost)
    for _, k in ipairs({KEYS[i], KEYS[i] .. ':amt', KEYS[i] .. ':sum'}) do redis.call('PEXPIRE', k, 2 * window) end
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    table.insert(out, tostring(limit - state[i] - cost))
    table.insert(out, tostring(tonumber(oldest[2]) + window - now))
  else
    redis.call('INCRBYFLOAT', KEYS[i], cost)
    if kind == 'budget' then redis.call('PEXPIRE', KEYS[i], window) else redis.call('PEXPIRE', KEYS[i], 600000) end
    table.insert(out, tostring(limit - state[i] - cost))
    if kind == 'budget' then table.insert(out, tostring(window)) else table.insert(out, '0') end
  end
end
return out
"""

# Settlements of many reservations at once: KEYS[i] with (kind, delta, reservation id) in ARGV.
_SETTLE = """
for i = 1, #KEYS do
  local kind, delta, id = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), ARGV[3 * i]
  if kind == 'rate' then
    if redis.call('HEXISTS', KEYS[i] .. ':amt', id) == 1 then
      redis.call('HINCRBYFLOAT', KEYS[i] .. ':amt', id, delta)
      redis.call('INCRBYFLOAT', KEYS[i] .. ':sum', delta)
    end
  elseif kind == 'conc' then
    if tonumber(redis.call('INCRBYFLOAT', KEYS[i], -delta)) < 0 then redis.call('SET', KEYS[i], '0') end
  else
    redis.call('INCRBYFLOAT', KEYS[i], delta)
  end
end
return 1
"""


class RedisLimiter:
    def __init__(self, redis, fail_open: bool = True, prefix: str = "shipyard:limit:",
                 settle_interval_s: float = 0.002):
        self.redis = redis
        self.fail_open = fail_open
        self.prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._last_warning = 0.0
        self.settle_interval_s = settle_interval_s
        self._pending: list[tuple[str, str, float, str]] = []
        self._flusher: asyncio.Future | None = None
        self._wake = asyncio.Event()

    async def acquire(self, buckets: list[Bucket], fence: tuple[str, int] | None = None) -> Reservation:
        if not buckets and fence is None:
            return Reservation([])
        reservation = Reservation(buckets)
        args: list = [time.time() * 1000, reservation.id, "" if fence is None else fence[1]]
        keys = [self.prefix + b.key for b in buckets]
        if fence is not None:
            keys.append(fence[0])
        for b in buckets:
            args += [b.kind, b.limit, b.cost, b.window_ms]
        try:
            result = await self._acquire(keys=keys, args=args)
        except Exception as exc:
            if fence is not None:  # cannot check the key's freshness here: the caller re-reads it
                raise StaleCredentials("re-check the key") from exc
            return self._unavailable(exc, buckets)
        if int(result[0]) == 2:
            raise StaleCredentials("The API key changed; authenticate again.")
        if not buckets:
            return reservation
        if int(result[0]) == 0:
            bucket = buckets[int(result[1]) - 1]
            raise refusal(bucket, float(result[2]))
        values = [float(v) for v in result[1:]]
        reservation.remaining = values[0::2]
        reservation.reset_ms = values[1::2]
        return reservation

    async def settle(self, reservation: Reservation, actual: dict[str, float]) -> None:
        """Queue the reservation's corrections; a background flush sends every queued one in one
        script call (every `settle_interval_s`, or sooner when many wait), so settling costs the
        request no round trip. Corrections only ever return what was reserved and unused, or add
        what was used beyond it, a few milliseconds later."""
        if reservation.settled or not reservation.buckets or not reservation.remaining:
            reservation.settled = True
            return
        reservation.settled = True
        for bucket in reservation.buckets:
            if bucket.kind == CONCURRENCY:
                delta = bucket.cost
            elif bucket.metric in actual:
                delta = actual[bucket.metric] - bucket.cost
            else:
                continue
            self._pending.append((self.prefix + bucket.key, bucket.kind, delta, reservation.id))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_soon())
        elif len(self._pending) >= 256:
            self._wake.set()

    async def _flush_soon(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self.settle_interval_s)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()
        await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:256], self._pending[256:]
            keys, args = [], []
            for key, kind, delta, reservation_id in batch:
                keys.append(key)
                args += [kind, delta, reservation_id]
            try:
                await self._settle(keys=keys, args=args)
            except Exception as exc:
                log.warning("could not settle %d rate-limit corrections (Redis unreachable): %s", len(batch),
                            type(exc).__name__)

    async def close(self) -> None:
        """At shutdown: send what is still queued."""
        if self._flusher is not None and not self._flusher.done():
            self._wake.set()
            await self._flusher
        await self.flush()

    def _unavailable(self, exc: Exception, buckets: list[Bucket]) -> Reservation:
        if not self.fail_open:
            raise LimiterUnavailable("The rate limiter is unavailable; retry shortly.",
                                     headers={"Retry-After": "1"}) from exc
        now = time.monotonic()
        if now - self._last_warning > 10:  # one warning per 10 s, not one per request
            self._last_warning = now
            log.warning("Redis unreachable (%s): rate limits fail open", type(exc).__name__)
        return Reservation(buckets, settled=True)
