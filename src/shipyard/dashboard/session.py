"""Dashboard sign-in: an API key (viewer role or above) in `Authorization: Bearer`, or a session
cookie set by the sign-in form.

The cookie never holds the key. It is `<session id>.<key id>.<key generation>.<expiry>.<HMAC>`,
signed with a key derived from the server's pepper, HttpOnly, SameSite=Strict, path /dashboard.
Each request re-reads the key: a revoked, expired or rotated key (its generation moves) ends its
sessions. Signing out revokes the session itself (its id is kept in the store until it would
have expired), so a copy of the cookie taken before stops working everywhere, in every process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from shipyard.dashboard.data import Viewer
from shipyard.gateway.keystore import aware
from shipyard.gateway.roles import Permission, allows
from shipyard.store.models import RevokedSession

COOKIE = "shipyard_dashboard"
SESSION_S = 8 * 3600


def may_view(role: str) -> bool:
    """The dashboard is usage: the roles that may read it (gateway/roles.py's one table)."""
    return allows(role, Permission.USAGE_READ)


class Sessions:
    def __init__(self, pepper: bytes, keystore):
        self._key = hmac.new(pepper, b"shipyard dashboard session v1", hashlib.sha256).digest()
        self.keystore = keystore

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, generation: int, now: float | None = None) -> str:
        payload = f"{secrets.token_hex(16)}.{key_id}.{generation}.{int((now or time.time()) + SESSION_S)}"
        return f"{payload}.{self._sign(payload)}"

    def _session(self, cookie: str | None) -> tuple[str, str, int, int] | None:
        """(session id, key id, generation, expiry) of a cookie this server signed, unexpired."""
        if not cookie or len(cookie) > 512:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not payload or not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            session_id, rest = payload.split(".", 1)
            key_id, generation, expires = rest.rsplit(".", 2)
            generation_n, expires_at = int(generation), int(expires)
        except ValueError:
            return None
        if expires_at < time.time():
            return None
        return session_id, key_id, generation_n, expires_at

    async def revoke(self, cookie: str | None) -> None:
        """Sign-out: the session is refused from now on, in every process."""
        session = self._session(cookie)
        if session is None:
            return
        now = datetime.now(timezone.utc)
        async with self.keystore.db.session() as db:
            await db.execute(delete(RevokedSession).where(RevokedSession.expires_at < now))  # the table stays small
            db.add(RevokedSession(session_id=session[0], expires_at=now + timedelta(seconds=SESSION_S)))
            try:
                await db.commit()
            except IntegrityError:  # signed out twice: already revoked
                pass

    async def viewer(self, cookie: str | None) -> Viewer | None:
        """The signed-in viewer, or None for a missing, forged, revoked, stale or expired session."""
        session = self._session(cookie)
        if session is None:
            return None
        session_id, key_id, generation_n, _ = session
        async with self.keystore.db.session() as db:
            revoked = (await db.execute(select(RevokedSession.session_id)
                                        .where(RevokedSession.session_id == session_id))).first()
        if revoked is not None:
            return None
        key, tenant = await self.keystore.get_key_and_tenant(key_id)
        if key is None or tenant is None or key.revoked_at is not None or key.generation != generation_n:
            return None
        if key.expires_at is not None and aware(key.expires_at) <= datetime.now(timezone.utc):
            return None
        if not may_view(key.role):
            return None
        return Viewer(key.id, key.tenant_id, key.role)

