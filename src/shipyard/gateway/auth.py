"""Authentication: a presented key → a `Principal` (tenant, role, tier, limits), or a refusal.

Rows are cached in-process for speed. Freshness: every change bumps the row's `generation`;
with Redis configured, each request reads the current generation there (one GET), so a revoke
or rotation made on any replica applies on all at once. Without Redis (one process), the key
store invalidates this process's cache directly, and `cache_ttl_s` bounds staleness for other
processes sharing the database.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from shipyard.gateway import keys
from shipyard.gateway.errors import AuthenticationError, NotFound
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
    row: ApiKey
    tenant: Tenant
    fetched_at: float


def _limits(source) -> Limits:
    return Limits(source.rpm, source.tpm, source.max_concurrent, source.budget_usd, source.budget_period)


class Authenticator:
    def __init__(self, store: KeyStore, redis=None, cache_ttl_s: float = 2.0):
        self.store = store
        self.redis = redis
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, _Cached] = {}
        store.on_change(self._key_changed)

    def forget(self, key_id: str) -> None:
        """Drop a cached row (its fence failed): the next lookup reads the database."""
        self._cache.pop(key_id, None)

    async def _key_changed(self, key_id: str, generation: int) -> None:
        self._cache.pop(key_id, None)
        if self.redis is not None:
            try:
                await self.redis.set(generation_key(key_id), generation)
            except Exception as exc:  # other replicas re-read the database while Redis is away
                log.warning("could not publish a key change to Redis (%s)", type(exc).__name__)

    async def authenticate(self, token: str | None, defer_freshness: bool = False) -> Principal:
        """`defer_freshness`: with Redis, skip the generation read and leave it to the caller's fence."""
        if not token:
            raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        parsed = keys.parse_key(token)
        key_id, secret = (parsed.public_id, parsed.secret) if parsed else (BOOTSTRAP_KEY_ID, token)
        cached, fresh = await self._lookup(key_id, defer_freshness)
        row = cached.row if cached else None
        if row is None or not self._secret_matches(row, secret):
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

    def _secret_matches(self, row: ApiKey, secret: str) -> bool:
        pepper = self.store.pepper
        if keys.verify(pepper, row.secret_salt, row.secret_hash, secret):
            return True
        grace = aware(row.previous_valid_until)
        return grace is not None and utcnow() < grace and keys.verify(pepper, row.previous_salt,
                                                                      row.previous_hash, secret)

    async def _lookup(self, key_id: str, defer_freshness: bool = False) -> tuple[_Cached | None, bool]:
        """(cached row, whether it is known fresh)."""
        cached = self._cache.get(key_id)
        if cached is not None:
            if self.redis is not None:
                if defer_freshness:
                    return cached, False
                try:
                    current = await self.redis.get(generation_key(key_id))
                    if current is None or int(current) == cached.row.generation:
                        return cached, True
                except Exception:  # Redis away: the database is the truth, read it
                    pass
            elif time.monotonic() - cached.fetched_at < self.cache_ttl_s:
                return cached, True
        try:
            row = await self.store.get_key(key_id)
            tenant = await self.store.get_tenant(row.tenant_id)
        except NotFound:  # unknown key (or tenant): the same answer as a wrong secret
            self._cache.pop(key_id, None)
            return None, True
        cached = _Cached(row=row, tenant=tenant, fetched_at=time.monotonic())
        self._cache[key_id] = cached
        if self.redis is not None:
            try:
                await self.redis.set(generation_key(key_id), row.generation, nx=True)
            except Exception:
                pass
        return cached, True


def generation_key(key_id: str) -> str:
    return f"shipyard:keygen:{key_id}"


def rotation_due(row: ApiKey, now: datetime | None = None) -> bool:
    """True when a rotation policy exists and the key's secret is older than it allows."""
    if not row.rotation_period_days:
        return False
    last = aware(row.rotated_at) or aware(row.created_at)
    return ((now or utcnow()) - last).days >= row.rotation_period_days
