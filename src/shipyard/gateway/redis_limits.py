"""Limits shared by every gateway process through Redis: exact, and unable to leak capacity.

One Lua script checks and takes every bucket of a request atomically (and checks the key's
freshness as a fence in the same round trip). Concurrency slots are *leases*: a sorted set of
reservation ids scored by expiry. A live request renews its lease in the background; a lease
whose holder died, or whose release was lost while Redis froze, expires on its own, so no fault
can keep a key locked out. Releases are retried until Redis takes them.

Settling is batched (one script call for many requests) but a request holding a concurrency
slot waits for its own release to be written before it answers, so a client that sends its next
request the moment the last one ends is never refused under its limit. When Redis cannot be
reached the limiter fails open (admits, with a warning) or closed (503), as configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from shipyard.gateway.errors import LimiterUnavailable, StaleCredentials
from shipyard.gateway.limits import CONCURRENCY, Bucket, Reservation, refusal

log = logging.getLogger("shipyard.limits")

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
# Per bucket: kind, limit, cost, window (rate: the window; budget: time left in the period;
# conc: the lease length).
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
  elseif kind == 'conc' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)  -- leases nobody renewed
    local used = redis.call('ZCARD', KEYS[i])
    if used + cost > limit then return {0, i, '1000'} end
    state[i] = used
  else
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    if used + cost > limit then return {0, i, tostring(window)} end
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
  elseif kind == 'conc' then
    redis.call('ZADD', KEYS[i], now + window, id)
    redis.call('PEXPIRE', KEYS[i], 2 * window)
    table.insert(out, tostring(limit - state[i] - cost))
    table.insert(out, '0')
  else
    redis.call('INCRBYFLOAT', KEYS[i], cost)
    redis.call('PEXPIRE', KEYS[i], window)
    table.insert(out, tostring(limit - state[i] - cost))
    table.insert(out, tostring(window))
  end
end
return out
"""

# Settlements of many reservations at once: KEYS[1] marks the batch as applied (a retry of a
# batch whose reply was lost changes nothing twice); KEYS[i + 1] with (kind, delta, id) in ARGV.
_SETTLE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', 600000) == false then return 0 end
for i = 2, #KEYS do
  local kind, delta, id = ARGV[3 * i - 5], tonumber(ARGV[3 * i - 4]), ARGV[3 * i - 3]
  if kind == 'rate' then
    if redis.call('HEXISTS', KEYS[i] .. ':amt', id) == 1 then
      redis.call('HINCRBYFLOAT', KEYS[i] .. ':amt', id, delta)
      redis.call('INCRBYFLOAT', KEYS[i] .. ':sum', delta)
    end
  elseif kind == 'conc' then
    redis.call('ZREM', KEYS[i], id)
  else
    redis.call('INCRBYFLOAT', KEYS[i], delta)
  end
end
return 1
"""

# Lease renewal: ARGV[1] the new expiry, ARGV[2] the set's time to live, then one reservation id
# per key (only live leases move).
_RENEW = """
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', ARGV[1], ARGV[i + 2]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return 1
"""

_BATCH = 256


class EvictingRedis(RuntimeError):
    pass


async def check_keeps_keys(redis, url: str) -> None:
    """Refuse a Redis that may evict keys (a maxmemory with any policy but noeviction): limit
    windows, leases and budgets kept there would vanish under memory pressure (one tenant's
    cached answers could reset another's rate limit). Unreachable now: checked no further (the
    limiter's failure mode applies)."""
    try:
        info = await asyncio.wait_for(redis.info("memory"), 5)
    except Exception as exc:
        log.warning("could not read Redis's eviction policy (%s); limits assume it keeps keys", type(exc).__name__)
        return
    policy, maxmemory = info.get("maxmemory_policy", "noeviction"), int(info.get("maxmemory", 0) or 0)
    if maxmemory and policy != "noeviction":
        raise EvictingRedis(
            f"The Redis at {_without_password(url)} evicts keys (maxmemory {maxmemory}, maxmemory-policy {policy}): "
            "rate limits, concurrency leases and budgets kept there could be evicted. Set maxmemory-policy "
            "noeviction on it, or give the limits a Redis of their own (gateway.redis_url) and the cache another "
            "(cache.redis_url), which may evict.")


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


class RedisLimiter:
    def __init__(self, redis, fail_open: bool = True, prefix: str = "shipyard:limit:",
                 settle_interval_s: float = 0.002, lease_s: float = 30.0, release_wait_s: float = 1.0,
                 max_pending: int = 100_000):
        self.redis = redis
        self.fail_open = fail_open
        self.prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._renew = redis.register_script(_RENEW)
        self._last_warning = 0.0
        self.settle_interval_s = settle_interval_s
        self.lease_ms = int(lease_s * 1000)
        self.release_wait_s = release_wait_s
        self.max_pending = max_pending
        # (sequence, key, kind, delta, reservation id), oldest first; kept until Redis takes them
        self._pending: list[tuple[int, str, str, float, str]] = []
        self._sequence = 0
        self._written = 0  # every correction up to this sequence number is in Redis
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._flusher: asyncio.Future | None = None
        self._wake = asyncio.Event()
        self._held: dict[str, list[str]] = {}  # reservation id → its lease keys
        self._renewer: asyncio.Future | None = None

    async def acquire(self, buckets: list[Bucket], fence: tuple[str, int] | None = None) -> Reservation:
        if not buckets and fence is None:
            return Reservation([])
        reservation = Reservation(buckets)
        args: list = [time.time() * 1000, reservation.id, "" if fence is None else fence[1]]
        keys = [self.prefix + b.key for b in buckets]
        if fence is not None:
            keys.append(fence[0])
        for b in buckets:
            window = self.lease_ms if b.kind == CONCURRENCY else b.window_ms
            args += [b.kind, b.limit, b.cost, window]
        try:
            result = await self._acquire(keys=keys, args=args)
        except Exception as exc:
            if fence is not None:  # cannot check the key's freshness here: the caller re-reads it
                raise StaleCredentials("re-check the key") from exc
            return self._unavailable(exc, buckets)
        if self._pending:  # Redis answers: corrections held back by an outage can go now
            self._wake.set()
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
        leases = [self.prefix + b.key for b in buckets if b.kind == CONCURRENCY]
        if leases:
            self._held[reservation.id] = leases
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.ensure_future(self._renew_leases())
        return reservation

    async def settle(self, reservation: Reservation, actual: dict[str, float]) -> None:
        """Queue the reservation's corrections; a background flush sends every queued one in one
        script call. A reservation holding a concurrency lease waits (up to `release_wait_s`) for
        its release to be written; the others return at once. Corrections only ever return what
        was reserved and unused, or add what was used beyond it."""
        if reservation.settled or not reservation.buckets or not reservation.remaining:
            reservation.settled = True
            return
        reservation.settled = True
        holds_lease = self._held.pop(reservation.id, None) is not None
        for bucket in reservation.buckets:
            if bucket.kind == CONCURRENCY:
                delta = bucket.cost
            elif bucket.metric in actual:
                delta = actual[bucket.metric] - bucket.cost
            else:
                continue
            self._sequence += 1
            self._pending.append((self._sequence, self.prefix + bucket.key, bucket.kind, delta, reservation.id))
        if len(self._pending) > self.max_pending:  # Redis away for long: the oldest go (leases expire anyway)
            dropped = len(self._pending) - self.max_pending
            del self._pending[:dropped]
            log.warning("dropped %d queued rate-limit corrections (Redis unreachable)", dropped)
        if not holds_lease:
            self._kick(now=len(self._pending) >= _BATCH)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self._sequence, waiter))
        self._kick(now=True)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.release_wait_s)
        except asyncio.TimeoutError:
            pass  # Redis is slow: the release stays queued, and the lease would expire anyway

    def _kick(self, now: bool) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_loop())
        if now:
            self._wake.set()

    async def _flush_loop(self) -> None:
        backoff = 0.0
        while self._pending:
            try:  # after a failure, wait out the backoff unless Redis is seen answering again
                await asyncio.wait_for(self._wake.wait(), backoff or self.settle_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            backoff = 0.0 if await self.flush() else min(5.0, max(0.25, backoff * 2))

    async def flush(self) -> bool:
        """Write every queued correction; False (and everything kept for a retry) if Redis refused."""
        while self._pending:
            batch = self._pending[:_BATCH]
            keys, args = [f"{self.prefix}settled:{uuid.uuid4().hex}"], []
            for _, key, kind, delta, reservation_id in batch:
                keys.append(key)
                args += [kind, delta, reservation_id]
            try:
                await self._settle(keys=keys, args=args)
            except Exception as exc:
                log.warning("could not settle %d rate-limit corrections (Redis unreachable: %s); will retry",
                            len(batch), type(exc).__name__)
                self._release_waiters(everyone=True)
                return False
            del self._pending[: len(batch)]
            self._written = batch[-1][0]
            self._release_waiters()
        return True

    def _release_waiters(self, everyone: bool = False) -> None:
        still = []
        for sequence, waiter in self._waiters:
            if everyone or sequence <= self._written:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((sequence, waiter))
        self._waiters = still

    async def _renew_leases(self) -> None:
        """Every third of a lease, push the expiry of every lease still held."""
        while self._held:
            await asyncio.sleep(self.lease_ms / 3000)
            held = [(key, rid) for rid, keys in list(self._held.items()) for key in keys]
            expiry = time.time() * 1000 + self.lease_ms
            for start in range(0, len(held), _BATCH):
                part = held[start: start + _BATCH]
                try:
                    await self._renew(keys=[k for k, _ in part],
                                      args=[expiry, 2 * self.lease_ms, *[r for _, r in part]])
                except Exception as exc:
                    log.warning("could not renew %d concurrency leases (%s)", len(part), type(exc).__name__)
                    break

    async def close(self) -> None:
        """At shutdown: send what is still queued (once; leases expire for anything left)."""
        if self._renewer is not None:
            self._renewer.cancel()
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
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
