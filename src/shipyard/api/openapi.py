"""The OpenAPI description says what the server really answers.

FastAPI documents a 422 for validation errors; this server answers 400 (OpenAI's choice) and
also 401/403/404/408/409/413/415/429/503 from layers FastAPI cannot see (the request guard, the
gateway, the engines). Each operation gets exactly the statuses its route can produce, every
error with OpenAI's error shape.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from shipyard.api.authorization import AUTHENTICATED_ONLY, PUBLIC, ROUTE_PERMISSIONS
from shipyard.gateway.roles import Permission

_DESCRIPTIONS = {
    400: "Invalid request (bad JSON, a value out of range, an unsupported parameter)",
    401: "Missing, unknown, revoked or expired API key",
    403: "The key's role (or model list) does not allow this",
    404: "No such model or resource (or one of another tenant)",
    408: "The request body did not arrive in time",
    409: "A conflicting resource exists, or a concurrent change won",
    413: "The request body is too large",
    415: "The body is not JSON",
    429: "A rate limit, concurrency cap or budget is reached (Retry-After says when to retry)",
    500: "The engine or the server failed",
    502: "An upstream engine answered badly (or every replica failed)",
    504: "An upstream engine did not answer in time",
    503: "Overloaded, shutting down, or a backing store is unavailable (Retry-After)",
}

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}


# The table's templates as OpenAPI spells them ({model_id:path} → {model_id}).
_PERMISSIONS = {(method, re.sub(r"\{(\w+):\w+\}", r"{\1}", path)): permission
                for (method, path), permission in ROUTE_PERMISSIONS.items()}
_AUTHENTICATED_ONLY = {(method, re.sub(r"\{(\w+):\w+\}", r"{\1}", path)) for method, path in AUTHENTICATED_ONLY}


def statuses_for(method: str, path: str, has_body: bool, has_params: bool) -> set[int]:
    """Every error status the route can answer."""
    permission = _PERMISSIONS.get((method, path))
    out: set[int] = {500}
    if permission is not PUBLIC or (method, path) in _AUTHENTICATED_ONLY:
        out |= {401, 503}  # 503: the key store is away and this key was never read
        if (method, path) not in _AUTHENTICATED_ONLY:
            out.add(403)
    if has_body:
        out |= {400, 408, 413, 415}
    if has_params:
        out.add(400)
    if "{" in path:
        out.add(404)
    if permission is Permission.INFERENCE:
        out |= {400, 404, 503}
        if path.startswith("/v1/"):  # generation is limited and admitted; tokenizing is not
            out.add(429)
    if permission in (Permission.TENANTS_MANAGE, Permission.KEYS_MANAGE) and method in ("POST", "PATCH"):
        out.add(409)
    if permission is Permission.DEPLOYMENTS_MANAGE and "{" in path:
        out.add(409)  # not a deployment of replicas
    if permission is Permission.INFERENCE and path.startswith("/v1/"):
        out |= {502, 504}  # upstream engines: a bad answer, a timeout
    if path == "/ready" or path == "/health":
        out.add(503)
    return out


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                has_body = "requestBody" in operation
                has_params = bool(operation.get("parameters"))
                for status in sorted(statuses_for(method.upper(), path, has_body, has_params)):
                    responses[str(status)] = {
                        "description": _DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    }
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
