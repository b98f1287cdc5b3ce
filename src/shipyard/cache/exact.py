"""The exact prompt cache: a finished answer kept under its request's key, with a TTL and size
bounds. In process by default; in Redis when configured, so every gateway process shares it.

Invalidation is by generation numbers: each tenant and each deployment has one, and both are in
every key. Bumping one (the admin route) makes every older entry unreachable at once, in every
process, without scanning; the unreachable entries age out by their TTL or the LRU bound.

An invalidation is never lost: when Redis does not take the bump (frozen, down), the route answers
503 and this process keeps the bump and retries it until Redis takes it; meanwhile it serves and
stores no answer of that scope.

The footprint is bounded in bytes in Redis too (`max_bytes`, one script keeps a shared count and
drops the entries nearest their end past it), so a tenant's cacheable answers cannot fill the
Redis that others share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("shipyard.cache")


class ExactCacheConfig(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    enabled: bool = Field(True, description="Reuse answers to identical deterministic requests")
    ttl_s: float = Field(3600.0, gt=0, description="How long an answer is reused")
    max_entries: int = Field(10_000, ge=1, description="In-process bound (least recently used go first)")
    max_bytes: int = Field(256 << 20, ge=1, description="Bound on stored answers (in process, or in Redis for "
                           "all processes together)")
    max_entry_bytes: int = Field(1 << 20, ge=1, description="Bigger answers are not kept")
    backend: str = Field("auto", pattern="^(auto|memory|redis)$",
                         description="auto: Redis when the gateway has a redis_url, else in process")
    timeout_s: float = Field(0.5, gt=0, description="A lookup slower than this (a frozen Redis) is a miss")
    sampled_deployments: list[str] = Field(default_factory=list,
                                           description="Deployments whose sampled (temperature > 0, no seed) "
                                                       "answers are reused too")


class MemoryBackend:
    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._generations: dict[str, int] = {}

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self.size += len(value)
        while len(self._entries) > self.max_entries or self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= len(value)

    async def generations(self, names: list[str]) -> list[int]:
        return [self._generations.get(n, 0) for n in names]

    async def bump(self, name: str) -> None:
        self._generations[name] = self._generations.get(name, 0) + 1

    def __len__(self) -> int:
        return len(self._entries)


# KEYS: entry, index (zset: entry key → expiry ms), sizes (hash: entry key → bytes), byte count.
# ARGV: value, ttl ms, now ms, max bytes. Entries that expired by themselves leave the count first
# (a few per call), then the ones nearest their end go until the new one fits.
_SET_BOUNDED = """
local size = string.len(ARGV[1])
local function forget(key)
  local old = redis.call('HGET', KEYS[3], key)
  if old then
    redis.call('DECRBY', KEYS[4], tonumber(old))
    redis.call('HDEL', KEYS[3], key)
  end
  redis.call('ZREM', KEYS[2], key)
end
forget(KEYS[1])
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 64)) do forget(key) end
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
while total + size > tonumber(ARGV[4]) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest then break end
  forget(oldest)
  redis.call('DEL', oldest)
  total = tonumber(redis.call('GET', KEYS[4]) or '0')
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[2]), KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
redis.call('INCRBY', KEYS[4], size)
return total + size
"""


class RedisBackend:
    PREFIX = "shipyard:cache:"

    def __init__(self, redis, max_bytes: int):
        self.redis = redis
        self.max_bytes = max_bytes
        self._set = redis.register_script(_SET_BOUNDED)
        self._meta = [self.PREFIX + "meta:index", self.PREFIX + "meta:sizes", self.PREFIX + "meta:bytes"]

    async def get(self, key: str) -> bytes | None:
        return await self.redis.get(self.PREFIX + key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._set(keys=[self.PREFIX + key, *self._meta],
                        args=[value, max(1, int(ttl_s * 1000)), int(time.time() * 1000), self.max_bytes])

    async def generations(self, names: list[str]) -> list[int]:
        values = await self.redis.mget([self.PREFIX + "gen:" + n for n in names])
        return [int(v) if v is not None else 0 for v in values]

    async def bump(self, name: str) -> None:
        await self.redis.incr(self.PREFIX + "gen:" + name)


class ExactCache:
    """A request's answer is looked up and stored under one scoped key, taken when the request
    arrives: an invalidation while it runs bumps a generation, so its answer lands where no one
    looks instead of reviving what was just forgotten."""

    def __init__(self, config: ExactCacheConfig, redis=None):
        if config.backend == "redis" and redis is None:
            raise ValueError("the exact cache's 'redis' backend needs gateway.redis_url")
        self.config = config
        self.backend = RedisBackend(redis, config.max_bytes) if redis is not None and config.backend != "memory" \
            else MemoryBackend(config.max_entries, config.max_bytes)
        self.pending: set[str] = set()  # generations whose bump Redis has not taken yet
        self._retrying: asyncio.Task | None = None

    async def scope(self, key: str, tenant: str, deployment: str) -> str | None:
        """The key under the current generations, or None when the cache cannot answer in time
        (a failing or frozen Redis is a miss, never an error) or an invalidation of this scope
        has not landed yet."""
        names = _generation_names(tenant, deployment)
        if self.pending and not self.pending.isdisjoint(names):
            return None
        try:
            generations = await asyncio.wait_for(self.backend.generations(names), self.config.timeout_s)
        except Exception as exc:
            log.warning("exact cache unavailable (%s); answering from the engine", type(exc).__name__)
            return None
        return ".".join(map(str, generations)) + "." + key

    async def get(self, scoped: str) -> bytes | None:
        try:
            return await asyncio.wait_for(self.backend.get(scoped), self.config.timeout_s)
        except Exception as exc:
            log.warning("exact cache read failed (%s); answering from the engine", type(exc).__name__)
            return None

    async def put(self, scoped: str, value: bytes) -> None:
        if len(value) > self.config.max_entry_bytes:
            return
        try:
            await asyncio.wait_for(self.backend.set(scoped, value, self.config.ttl_s), self.config.timeout_s * 4)
        except Exception as exc:
            log.warning("exact cache write failed (%s)", type(exc).__name__)

    async def invalidate(self, tenant: str | None = None, deployment: str | None = None) -> None:
        """Every answer of the tenant, of the deployment, or (both given) of the tenant there.
        CacheUnavailable when the store did not take it in time: it is then kept and retried by
        this process until it lands (and the scope bypasses the cache meanwhile)."""
        names = _generation_names(tenant or "", deployment or "")
        name = names[2] if tenant is not None and deployment is not None else names[0] if tenant is not None \
            else names[1]
        self.pending.add(name)  # from now on, until the bump lands: no reads, no stores of this scope
        if not await self._bump(name):
            if self._retrying is None or self._retrying.done():
                self._retrying = asyncio.create_task(self._retry())
            raise CacheUnavailable("The cache's store did not answer: the invalidation is kept and retried until it "
                                   "lands; until then this server serves no cached answer of that scope.")

    async def _bump(self, name: str) -> bool:
        try:
            await asyncio.wait_for(self.backend.bump(name), self.config.timeout_s * 4)
        except Exception as exc:
            log.warning("cache invalidation not taken yet (%s); retrying", type(exc).__name__)
            return False
        self.pending.discard(name)
        return True

    async def _retry(self) -> None:
        while self.pending:
            await asyncio.sleep(0.25)
            for name in list(self.pending):
                await self._bump(name)

    async def close(self) -> None:
        """At shutdown: one last try of any invalidation Redis has not taken (it is only in this
        process's memory), then stop retrying."""
        if self._retrying is not None:
            self._retrying.cancel()
        for name in list(self.pending):
            await self._bump(name)
        if self.pending:
            log.error("cache invalidations lost at shutdown, Redis never took them: %s; clear those scopes "
                      "again", ", ".join(sorted(self.pending))[:500])


class CacheUnavailable(RuntimeError):
    """An invalidation the cache's store did not take (yet): a 503, retried by the server."""


def _generation_names(tenant: str, deployment: str) -> list[str]:
    return [f"tenant:{tenant}", f"deployment:{deployment}", f"pair:{tenant}\0{deployment}"]
