"""Authentication: a presented key → a `Principal` (tenant, role, tier, limits), or a refusal.

Rows are cached in-process for speed. Freshness: every change bumps the row's `generation`;
with Redis configured, each request reads the current generation there (one GET), so a revoke
or rotation made on any replica applies on all at once. Without Redis (one process), the key
store invalidates this process's cache directly, and `cache_ttl_s` bounds staleness for other
processes sharing the database.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from shipyard.gateway import keys
from shipyard.gateway.errors import AuthenticationError, AuthUnavailable
from shipyard.gateway.keystore import BOOTSTRAP_KEY_ID, KeyStore, aware, utcnow
from shipyard.store.models import ApiKey, Tenant

log = logging.getLogger("shipyard.auth")


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: str
    role: str
    tier: int
    allowed_models: tuple[str, ...] | None
    key_limits: Limits
    tenant_limits: Limits
    rotation_due: bool = False
    generation: int = 0
    # False when the cached row was not checked against Redis yet: the limits script checks it
    # (as a fence) in the same round trip, and a mismatch sends the caller back here.
    fresh: bool = True


@dataclass
class _Cached:
    row: ApiKey | None  # None: no such key (cached too, so unknown ids cost what known ones do)
    tenant: Tenant | None
    fetched_at: float


def _limits(source) -> Limits:
    return Limits(source.rpm, source.tpm, source.max_concurrent, source.budget_usd, source.budget_period)


_UNREAD = object()
# Verified against when the key id is unknown, so that path costs one HMAC like a wrong secret.
_DUMMY_SALT, _DUMMY_HASH = "0" * 32, "0" * 64


class Authenticator:
    """Keys from the database, cached. The last good read of a key keeps serving while the
    database is unreachable (revocations still arrive through Redis); a key never read before
    gets 503 + Retry-After then, never a traceback."""

    def __init__(self, store: KeyStore, redis=None, cache_ttl_s: float = 2.0, db_timeout_s: float = 2.0,
                 max_cached: int = 100_000):
        self.store = store
        self.redis = redis
        self.cache_ttl_s = cache_ttl_s
        self.db_timeout_s = db_timeout_s
        self.max_cached = max_cached
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}  # one database read per key at a time
        self._last_outage_log = 0.0
        store.on_change(self._key_changed)

    def forget(self, key_id: str) -> None:
        """Mark a cached row stale (its fence failed): the next lookup reads the database, and
        falls back to it only if the database is away."""
        cached = self._cache.get(key_id)
        if cached is not None:
            cached.fetched_at = -math.inf

    async def _key_changed(self, key_id: str, generation: int, revoked: bool = False) -> None:
        self._cache.pop(key_id, None)
        if self.redis is not None:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.set(generation_key(key_id), generation)
                    if revoked:
                        pipe.set(revoked_key(key_id), 1)
                    else:
                        pipe.delete(revoked_key(key_id))
                    await pipe.execute()
            except Exception as exc:  # other replicas re-read the database while Redis is away
                log.warning("could not publish a key change to Redis (%s)", type(exc).__name__)

    async def authenticate(self, token: str | None, defer_freshness: bool = False) -> Principal:
        """`defer_freshness`: with Redis, skip the generation read and leave it to the caller's fence."""
        if not token:
            raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        parsed = keys.parse_key(token)
        key_id, secret = (parsed.public_id, parsed.secret) if parsed else (BOOTSTRAP_KEY_ID, token)
        if len(key_id) > 64 or len(secret) > 256:
            raise AuthenticationError("Incorrect API key provided.")
        cached, fresh = await self._lookup(key_id, defer_freshness)
        row = cached.row
        if not self._secret_matches(row, secret):
            raise AuthenticationError("Incorrect API key provided.")
        if row.revoked_at is not None:
            raise AuthenticationError("This API key has been revoked.")
        expires = aware(row.expires_at)
        if expires is not None and expires <= utcnow():
            raise AuthenticationError("This API key has expired.")
        return Principal(
            key_id=row.id,
            tenant_id=row.tenant_id,
            role=row.role,
            tier=row.tier,
            allowed_models=tuple(row.allowed_models) if row.allowed_models else None,
            key_limits=_limits(row),
            tenant_limits=_limits(cached.tenant),
            rotation_due=rotation_due(row),
            generation=row.generation,
            fresh=fresh,
        )

    def _secret_matches(self, row: ApiKey | None, secret: str) -> bool:
        pepper = self.store.pepper
        if row is None:
            keys.verify(pepper, _DUMMY_SALT, _DUMMY_HASH, secret)  # the same work as a known id
            return False
        if keys.verify(pepper, row.secret_salt, row.secret_hash, secret):
            return True
        grace = aware(row.previous_valid_until)
        return grace is not None and utcnow() < grace and keys.verify(pepper, row.previous_salt,
                                                                      row.previous_hash, secret)

    async def _lookup(self, key_id: str, defer_freshness: bool = False) -> tuple[_Cached, bool]:
        """(cached row, whether it is known fresh)."""
        cached = self._cache.get(key_id)
        if cached is not None:
            self._cache.move_to_end(key_id)
            young = time.monotonic() - cached.fetched_at < self.cache_ttl_s
            if self.redis is not None and cached.fetched_at > -math.inf:
                # An unknown id (row None) takes the same steps as a known one: no timing tells them apart.
                if defer_freshness:  # known or not, the same path: no database read tells them apart
                    return cached, False
                else:
                    try:
                        current = await self.redis.get(generation_key(key_id))
                    except Exception:  # Redis away: the database is the truth, read it
                        current = _UNREAD
                    if cached.row is None:
                        if young:
                            return cached, True
                    elif current is None or (current is not _UNREAD and int(current) == cached.row.generation):
                        return cached, True
            elif young:
                return cached, True
        try:
            return await self._read(key_id), True
        except Exception as exc:
            return await self._fallback(key_id, cached, exc), True

    async def _read(self, key_id: str) -> _Cached:
        loading = self._loading.get(key_id)
        if loading is None:
            loading = asyncio.ensure_future(asyncio.wait_for(self._read_database(key_id), self.db_timeout_s))
            self._loading[key_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key_id, None))
        return await asyncio.shield(loading)

    async def _read_database(self, key_id: str) -> _Cached:
        # One query for known and unknown ids alike; an unknown one is cached as such.
        row, tenant = await self.store.get_key_and_tenant(key_id)
        cached = _Cached(row=row, tenant=tenant, fetched_at=time.monotonic())
        self._cache[key_id] = cached
        self._cache.move_to_end(key_id)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        if self.redis is not None and row is not None:
            try:
                await self.redis.set(generation_key(key_id), row.generation, nx=True)
            except Exception:
                pass
        return cached

    async def _fallback(self, key_id: str, cached: _Cached | None, exc: Exception) -> _Cached:
        """The database could not be read: serve the last good read, unless Redis says the key
        was revoked (401) or changed in a way this copy cannot know (503)."""
        now = time.monotonic()
        if now - self._last_outage_log > 10:  # one line per 10 s, not one per request
            self._last_outage_log = now
            log.warning("key store unreachable (%s): serving keys from their last good read",
                        type(exc).__name__ or "timeout")
        unavailable = AuthUnavailable("Authentication is temporarily unavailable; retry shortly.",
                                      headers={"Retry-After": "2"})
        if cached is None:
            raise unavailable from None
        if self.redis is not None and cached.row is not None:
            try:
                revoked, current = await self.redis.mget(revoked_key(key_id), generation_key(key_id))
            except Exception:
                return cached  # both stores away: the last good read is all there is
            if revoked is not None:
                raise AuthenticationError("This API key has been revoked.")
            if current is not None and int(current) != cached.row.generation:
                raise unavailable from None  # rotated elsewhere: which secret is valid is unknown
        return cached


@dataclass
class Caller:
    """Who is calling, and how to check them again (the token stays inside the closure)."""

    principal: Principal
    reauthenticate: Callable[[], Awaitable[Principal]] = field(repr=False)


def generation_key(key_id: str) -> str:
    return f"shipyard:keygen:{key_id}"


def revoked_key(key_id: str) -> str:
    return f"shipyard:keyrevoked:{key_id}"


def rotation_due(row: ApiKey, now: datetime | None = None) -> bool:
    """True when a rotation policy exists and the key's secret is older than it allows."""
    if not row.rotation_period_days:
        return False
    last = aware(row.rotated_at) or aware(row.created_at)
    return ((now or utcnow()) - last).days >= row.rotation_period_days


class InternalTokenAuthenticator:
    """A worker's one internal token (`shipyard worker --token`): the gateway in front presents it;
    anything else is a 401. It stands for the gateway, so it may do everything on the worker."""

    def __init__(self, token: str):
        self._token = token.encode()
        self.principal = Principal(key_id="internal", tenant_id="internal", role="admin", tier=0,
                                   allowed_models=None, key_limits=Limits(), tenant_limits=Limits())

    def forget(self, key_id: str) -> None:
        pass

    async def authenticate(self, token: str | None, defer_freshness: bool = False) -> Principal:
        if not token:
            raise AuthenticationError("Missing token. Send the worker's token as 'Authorization: Bearer <token>'.")
        if not hmac.compare_digest(token.encode(), self._token):
            raise AuthenticationError("Incorrect worker token provided.")
        return self.principal
