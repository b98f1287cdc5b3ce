"""What is checked before a byte of the body is read: who is calling, and what they send.

Pure ASGI, between the request context and the app. It finds the route, reads its access
policy from the one table (api/authorization.py), and authenticates from the headers alone, so
an unauthenticated client cannot make the server hold its body (it is refused at once and the
connection closed). Then the content type: a route that takes a JSON body refuses anything else
with 415. A WebSocket handshake is refused the same way, with an HTTP denial response, so a
refused socket is a logged 401/403, never a server error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.api.authorization import (
    AUTHENTICATED_ONLY,
    PUBLIC,
    ROUTE_PERMISSIONS,
    Caller,
    bearer_token,
    check_permission,
)
from shipyard.api.errors import APIError, from_exception
from shipyard.gateway.errors import GatewayError
from shipyard.gateway.roles import Permission

log = logging.getLogger("shipyard.api")


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return b"transfer-encoding" in headers


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class RequestGuard:
    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute], gateway):
        self.app = app
        self.routes = list(routes)  # the app's own routes (the docs pages are public and bodiless)
        self.gateway = gateway
        self._static: dict[tuple[str, str, str], BaseRoute] = {}  # routes without path parameters, by path

    def _route(self, scope: Scope) -> BaseRoute | None:
        key = (scope["type"], scope.get("method", ""), scope["path"])
        route = self._static.get(key)
        if route is not None:
            return route
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                if "{" not in getattr(route, "path", "{"):  # bounded: one entry per static route
                    self._static[key] = route
                return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        websocket = scope["type"] == "websocket"
        route = self._route(scope)
        if route is None:  # 404 / 405: the app answers
            await self.app(scope, receive, send)
            return
        method = "WS" if websocket else scope["method"]
        key = (method, route.path)
        headers = dict(scope.get("headers") or [])
        try:
            if key not in ROUTE_PERMISSIONS or ROUTE_PERMISSIONS[key] is not PUBLIC or key in AUTHENTICATED_ONLY:
                permission = ROUTE_PERMISSIONS.get(key)
                principal = await self._authenticate(scope, permission)
                check_permission(key, principal)
            if not websocket:
                self._check_content_type(route, headers)
        except Exception as exc:  # refusals, and any fault reading the key (mapped, e.g. a store outage → 503)
            error = from_exception(exc)
            if not isinstance(exc, (APIError, GatewayError)):
                log.warning("authentication failed: %s (%s)", error.code, type(exc).__name__)
            await self._refuse(scope, send, error, websocket, close=not websocket and _has_body(headers))
            return
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, permission: Permission | None):
        from starlette.requests import HTTPConnection

        conn = HTTPConnection(scope)
        token = bearer_token(conn)
        gateway = self.gateway
        # Inference re-checks a cached key's freshness inside the limits script (one round trip
        # fewer); everything else checks it here.
        principal = await gateway.authenticate(token, defer_freshness=permission is Permission.INFERENCE)
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["caller"] = Caller(principal, lambda: gateway.authenticate(token))
        state["token_check"] = lambda: gateway.authenticate(token, defer_freshness=True)
        record = state.get("record")
        if record is not None:
            record.key_id, record.tenant_id = principal.key_id, principal.tenant_id
        return principal

    @staticmethod
    def _check_content_type(route: BaseRoute, headers: dict[bytes, bytes]) -> None:
        body_field = getattr(route, "body_field", None)
        if body_field is None:
            return
        content_type = headers.get(b"content-type")
        required = body_field.field_info.is_required()
        if content_type is None and not required and not _has_body(headers):
            return  # an optional body, left out
        if content_type is None or not _is_json(content_type):
            given = "none" if content_type is None else repr(content_type.decode("latin-1")[:100])
            raise APIError(415, f"Unsupported media type {given}: send the body as JSON with "
                           "'Content-Type: application/json'.", code="unsupported_media_type")

    @staticmethod
    async def _refuse(scope: Scope, send: Send, error: APIError, websocket: bool, close: bool) -> None:
        record = scope.get("state", {}).get("record")
        if record is not None:
            record.error_type = error.type
            record.status = error.status
        if websocket and "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
            return
        await error.send(send, close=close, websocket=websocket)
