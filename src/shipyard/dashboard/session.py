"""Dashboard sign-in: an API key (viewer role or above) in `Authorization: Bearer`, or a session
cookie set by the sign-in form.

The cookie never holds the key. It is `<key id>.<key generation>.<expiry>.<HMAC>`, signed with a
key derived from the server's pepper, HttpOnly, SameSite=Strict, path /dashboard. Each request
re-reads the key: a revoked, expired or rotated key (its generation moves) ends its sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime, timezone

from shipyard.dashboard.data import Viewer
from shipyard.gateway.keystore import aware

COOKIE = "shipyard_dashboard"
SESSION_S = 8 * 3600
VIEW_ROLES = ("admin", "tenant-admin", "viewer")  # those that may read usage


class Sessions:
    def __init__(self, pepper: bytes, keystore):
        self._key = hmac.new(pepper, b"shipyard dashboard session v1", hashlib.sha256).digest()
        self.keystore = keystore

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, generation: int, now: float | None = None) -> str:
        payload = f"{key_id}.{generation}.{int((now or time.time()) + SESSION_S)}"
        return f"{payload}.{self._sign(payload)}"

    async def viewer(self, cookie: str | None) -> Viewer | None:
        """The signed-in viewer, or None for a missing, forged, stale or expired session."""
        if not cookie or len(cookie) > 512:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not payload or not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            key_id, generation, expires = payload.rsplit(".", 2)
            generation_n, expires_at = int(generation), int(expires)
        except ValueError:
            return None
        if expires_at < time.time():
            return None
        key, tenant = await self.keystore.get_key_and_tenant(key_id)
        if key is None or tenant is None or key.revoked_at is not None or key.generation != generation_n:
            return None
        if key.expires_at is not None and aware(key.expires_at) <= datetime.now(timezone.utc):
            return None
        if key.role not in VIEW_ROLES:
            return None
        return Viewer(key.id, key.tenant_id, key.role)

