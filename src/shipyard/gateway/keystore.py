"""Tenants and keys in the database: create, list, rotate, revoke, bootstrap the admin key.

Every change bumps the key's `generation`, which authenticators on every replica compare with
their cached copy (through Redis when configured), so a revoke or rotation takes effect at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from shipyard.gateway import keys
from shipyard.gateway.errors import Conflict, NotFound
from shipyard.gateway.roles import Role
from shipyard.store.db import Database
from shipyard.store.models import ApiKey, Tenant

SYSTEM_TENANT = "system"
BOOTSTRAP_KEY_ID = "bootstrap-admin"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything here is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


@dataclass
class KeySpec:
    tenant_id: str
    role: str = Role.DEVELOPER.value
    name: str = ""
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    tier: int = 0
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None
    rotation_period_days: int | None = None
    rotation_grace_s: float | None = None


ROTATION_RACE_S = 2.0  # rotations closer than this to the last one are a race: refused (409)


class KeyStore:
    def __init__(self, db: Database, pepper: bytes):
        self.db = db
        self.pepper = pepper
        self._listeners: list[Callable[[str, int], Awaitable[None]]] = []

    def on_change(self, listener: Callable[..., Awaitable[None]]) -> None:
        """`listener(key_id, generation, revoked)` after every committed change of a key."""
        self._listeners.append(listener)

    async def _changed(self, key_id: str, generation: int, revoked: bool = False) -> None:
        for listener in self._listeners:
            await listener(key_id, generation, revoked)

    # ------------------------------------------------------------------ tenants
    async def create_tenant(self, name: str, **fields) -> Tenant:
        """Names are unique: of simultaneous creates of one name, one wins and the rest get 409."""
        conflict = Conflict(f"A tenant named '{name}' already exists.")
        async with self.db.session() as session:
            if (await session.execute(select(Tenant).where(Tenant.name == name))).scalar_one_or_none():
                raise conflict
            tenant = Tenant(id=f"t-{uuid.uuid4().hex[:12]}", name=name, created_at=utcnow(), **fields)
            session.add(tenant)
            try:
                await session.commit()
            except IntegrityError:  # the unique index caught a create that raced this one
                raise conflict from None
            return tenant

    async def update_tenant(self, tenant_id: str, **fields) -> Tenant:
        """Change limits or the tier ceiling; keys of the tenant re-read them at once."""
        async with self.db.session() as session:
            tenant = await session.get(Tenant, tenant_id)
            if tenant is None:
                raise NotFound(f"No tenant '{tenant_id}'.")
            for name, value in fields.items():
                setattr(tenant, name, value)
            changed = list((await session.execute(select(ApiKey).where(ApiKey.tenant_id == tenant_id))).scalars())
            for row in changed:  # the tenant's limits live in each key's cached principal
                row.generation += 1
            try:  # one transaction: the new limits and the bumped keys land together, or neither
                await session.commit()
            except StaleDataError:
                raise Conflict("A key of this tenant changed at the same time; retry.") from None
        for row in changed:
            await self._changed(row.id, row.generation, row.revoked_at is not None)
        return tenant

    async def get_tenant(self, tenant_id: str) -> Tenant:
        async with self.db.session() as session:
            tenant = await session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"No tenant '{tenant_id}'.")
        return tenant

    async def list_tenants(self, only: str | None = None) -> list[Tenant]:
        async with self.db.session() as session:
            query = select(Tenant).order_by(Tenant.created_at)
            if only is not None:
                query = query.where(Tenant.id == only)
            return list((await session.execute(query)).scalars())

    async def ensure_system_tenant(self) -> None:
        async with self.db.session() as session:
            if await session.get(Tenant, SYSTEM_TENANT) is None:
                session.add(Tenant(id=SYSTEM_TENANT, name=SYSTEM_TENANT, created_at=utcnow()))
                try:
                    await session.commit()
                except IntegrityError:  # another process created it first
                    await session.rollback()

    # ------------------------------------------------------------------ keys
    async def create_key(self, spec: KeySpec) -> tuple[ApiKey, str]:
        """Returns the row and the plaintext key: the only time it exists outside the caller."""
        await self.get_tenant(spec.tenant_id)
        public_id, secret, salt = keys.new_public_id(), keys.new_secret(), keys.new_salt()
        row = ApiKey(id=public_id, secret_salt=salt, secret_hash=keys.hash_secret(self.pepper, salt, secret),
                     generation=0, created_at=utcnow(), **vars(spec))
        async with self.db.session() as session:
            session.add(row)
            await session.commit()
        return row, keys.format_key(public_id, secret)

    async def get_key_and_tenant(self, key_id: str) -> tuple[ApiKey | None, Tenant | None]:
        """One query, whether the key exists or not (authentication costs the same either way)."""
        async with self.db.session() as session:
            query = select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.id == key_id)
            found = (await session.execute(query)).first()
        return (found[0], found[1]) if found is not None else (None, None)

    async def get_key(self, key_id: str) -> ApiKey:
        async with self.db.session() as session:
            row = await session.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"No API key '{key_id}'.")
        return row

    async def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        async with self.db.session() as session:
            query = select(ApiKey).order_by(ApiKey.created_at)
            if tenant_id is not None:
                query = query.where(ApiKey.tenant_id == tenant_id)
            return list((await session.execute(query)).scalars())

    async def rotate_key(self, key_id: str, grace_seconds: float | None = None) -> tuple[ApiKey, str]:
        """New secret for the same key id; the old one keeps working for `grace_seconds`
        (default: the key's rotation policy, else none)."""
        secret, salt = keys.new_secret(), keys.new_salt()
        async with self.db.session() as session:
            row = await session.get(ApiKey, key_id)
            if row is None or row.id == BOOTSTRAP_KEY_ID:
                raise NotFound(f"No API key '{key_id}'.")
            if row.revoked_at is not None:
                raise Conflict("A revoked key cannot be rotated.")
            now = utcnow()
            last = aware(row.rotated_at)
            if last is not None and (now - last).total_seconds() < ROTATION_RACE_S:
                # Racing rotations that the store serialized: the first one's secret stands, and its
                # caller must not be handed a secret that the second one silently replaced.
                raise Conflict("The key was rotated moments ago by another request: its new secret stands. "
                               f"Rotate again after {ROTATION_RACE_S:g} s if you meant to.")
            if grace_seconds is None:
                grace_seconds = row.rotation_grace_s
            if grace_seconds and grace_seconds > 0:
                row.previous_salt, row.previous_hash = row.secret_salt, row.secret_hash
                row.previous_valid_until = now + timedelta(seconds=grace_seconds)
            else:
                row.previous_salt = row.previous_hash = row.previous_valid_until = None
            row.secret_salt, row.secret_hash = salt, keys.hash_secret(self.pepper, salt, secret)
            row.rotated_at = now
            row.generation += 1
            try:
                await session.commit()
            except StaleDataError:  # another rotation or revoke won the race: its secret stands
                raise Conflict("The key was changed by a concurrent request; nothing was rotated.") from None
        await self._changed(row.id, row.generation)
        return row, keys.format_key(row.id, secret)

    async def revoke_key(self, key_id: str) -> ApiKey:
        async with self.db.session() as session:
            row = await session.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"No API key '{key_id}'.")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                row.generation += 1
                try:
                    await session.commit()
                except StaleDataError:  # raced a rotation: read again, revoke what is there now
                    return await self.revoke_key(key_id)
        await self._changed(row.id, row.generation, revoked=True)
        return row

    async def bootstrap_admin(self, admin_key: str | None) -> None:
        """Store SHIPYARD_ADMIN_KEY hashed like any key; a changed variable replaces the old one."""
        await self.ensure_system_tenant()
        if admin_key is None:
            return
        try:
            await self._store_bootstrap_key(admin_key)
        except (IntegrityError, StaleDataError):  # several processes starting together: one wrote it, check again
            await self._store_bootstrap_key(admin_key)

    async def _store_bootstrap_key(self, admin_key: str) -> None:
        async with self.db.session() as session:
            row = await session.get(ApiKey, BOOTSTRAP_KEY_ID)
            if row is not None and keys.verify(self.pepper, row.secret_salt, row.secret_hash, admin_key):
                return
            salt = keys.new_salt()
            if row is None:
                row = ApiKey(id=BOOTSTRAP_KEY_ID, tenant_id=SYSTEM_TENANT, name="bootstrap admin",
                             role=Role.ADMIN.value, tier=100, generation=0, created_at=utcnow(),
                             secret_salt=salt, secret_hash=keys.hash_secret(self.pepper, salt, admin_key))
                session.add(row)
            else:
                row.secret_salt, row.secret_hash = salt, keys.hash_secret(self.pepper, salt, admin_key)
                row.revoked_at, row.rotated_at = None, utcnow()
                row.generation += 1
            await session.commit()
        await self._changed(BOOTSTRAP_KEY_ID, row.generation)

    async def has_admin(self) -> bool:
        async with self.db.session() as session:
            query = select(ApiKey.id).where(ApiKey.role == Role.ADMIN.value, ApiKey.revoked_at.is_(None)).limit(1)
            return (await session.execute(query)).first() is not None
