"""Gateway refusals; the api layer maps each to an HTTP status and an OpenAI error body.
Messages never contain a key or its secret."""

from __future__ import annotations


class GatewayError(Exception):
    status = 400
    code: str | None = None

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers or {}


class AuthenticationError(GatewayError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class RateLimited(GatewayError):
    status = 429
    code = "rate_limit_exceeded"


class Overloaded(GatewayError):
    """Shed by tiered admission or timed out waiting (503 + Retry-After)."""

    status = 503
    code = "server_overloaded"


class LimiterUnavailable(GatewayError):
    """Redis is unreachable and the limiter fails closed."""

    status = 503
    code = "rate_limiter_unavailable"


class StaleCredentials(GatewayError):
    """The cached key changed elsewhere (rotated, revoked): authenticate again, then retry."""

    status = 401
    code = "invalid_api_key"


class AuthUnavailable(GatewayError):
    """The key store cannot be read and this key was never read before (503 + Retry-After)."""

    status = 503
    code = "auth_unavailable"
