"""Authentication and authorization for every route, from one table.

Each route maps to exactly one permission (or is public); a route missing from the table is
refused, so a new route cannot be reachable by accident. The principal lands in
`request.state.principal` for the handlers (which only ever narrow by tenant).
"""

from __future__ import annotations

from fastapi import Request
from starlette.requests import HTTPConnection

from shipyard.gateway.auth import Caller
from shipyard.gateway.errors import AuthenticationError, PermissionDenied
from shipyard.gateway.roles import Permission, allows, refusal

PUBLIC = None

ROUTE_PERMISSIONS: dict[tuple[str, str], Permission | None] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/metrics"): Permission.METRICS_READ,
    ("POST", "/v1/chat/completions"): Permission.INFERENCE,
    ("POST", "/v1/completions"): Permission.INFERENCE,
    ("POST", "/v1/embeddings"): Permission.INFERENCE,
    ("WS", "/v1/chat/completions"): Permission.INFERENCE,
    ("WS", "/v1/completions"): Permission.INFERENCE,
    ("POST", "/v1/feedback"): Permission.INFERENCE,  # on the caller's own tenant's responses only
    ("GET", "/v1/models"): Permission.MODELS_READ,
    ("GET", "/v1/models/{model_id:path}"): Permission.MODELS_READ,
    ("POST", "/admin/tenants"): Permission.TENANTS_MANAGE,
    ("GET", "/admin/tenants"): Permission.TENANTS_READ,
    ("GET", "/admin/tenants/{tenant_id}"): Permission.TENANTS_READ,
    ("POST", "/admin/keys"): Permission.KEYS_MANAGE,
    ("GET", "/admin/keys"): Permission.KEYS_READ,
    ("GET", "/admin/keys/{key_id}"): Permission.KEYS_READ,
    ("POST", "/admin/keys/{key_id}/rotate"): Permission.KEYS_MANAGE,
    ("POST", "/admin/keys/{key_id}/revoke"): Permission.KEYS_MANAGE,
    ("GET", "/admin/usage"): Permission.USAGE_READ,
    ("PATCH", "/admin/tenants/{tenant_id}"): Permission.TENANTS_MANAGE,
    ("GET", "/admin/deployments"): Permission.DEPLOYMENTS_MANAGE,
    ("GET", "/admin/deployments/{name}/plan"): Permission.DEPLOYMENTS_MANAGE,
    ("POST", "/admin/deployments/{name}/replicas"): Permission.DEPLOYMENTS_MANAGE,
    ("GET", "/admin/deployments/{name}/autoscaler"): Permission.DEPLOYMENTS_MANAGE,
    ("DELETE", "/admin/deployments/{name}/replicas/{replica}"): Permission.DEPLOYMENTS_MANAGE,
    ("POST", "/admin/deployments/{name}/replicas/{replica}/drain"): Permission.DEPLOYMENTS_MANAGE,
    ("POST", "/admin/deployments/{name}/replicas/{replica}/resume"): Permission.DEPLOYMENTS_MANAGE,
    ("GET", "/admin/experiments"): Permission.DEPLOYMENTS_MANAGE,
    ("POST", "/admin/experiments"): Permission.DEPLOYMENTS_MANAGE,
    ("GET", "/admin/experiments/{name}"): Permission.DEPLOYMENTS_MANAGE,
    ("POST", "/admin/experiments/{name}/{action}"): Permission.DEPLOYMENTS_MANAGE,
    ("GET", "/admin/experiments/{name}/report"): Permission.DEPLOYMENTS_MANAGE,
    ("POST", "/admin/experiments/{name}/replay"): Permission.DEPLOYMENTS_MANAGE,
    ("GET", "/admin/experiments/{name}/replays/{job_id}"): Permission.DEPLOYMENTS_MANAGE,
    ("GET", "/admin/review"): Permission.REVIEW,
    ("GET", "/admin/review/export"): Permission.REVIEW,
    ("GET", "/admin/review/{item_id}"): Permission.REVIEW,
    ("POST", "/admin/review/{item_id}/label"): Permission.REVIEW,
    ("POST", "/admin/review/{item_id}/{action}"): Permission.REVIEW,
    # Retraining triggers watch every tenant's scores: global, like alert rules.
    ("GET", "/admin/triggers"): Permission.MONITOR_MANAGE,
    ("GET", "/admin/triggers/{name}/evaluations"): Permission.MONITOR_MANAGE,
    ("DELETE", "/admin/cache"): Permission.CACHE_MANAGE,
    ("GET", "/admin/monitor/health"): Permission.METRICS_READ,
    ("POST", "/admin/scores"): Permission.SCORES_WRITE,
    ("GET", "/admin/scores"): Permission.USAGE_READ,
    ("GET", "/admin/alerts"): Permission.USAGE_READ,
    ("GET", "/admin/alerts/rules"): Permission.USAGE_READ,
    ("POST", "/admin/alerts/rules"): Permission.MONITOR_MANAGE,
    ("DELETE", "/admin/alerts/rules/{name}"): Permission.MONITOR_MANAGE,
    ("GET", "/admin/alerts/export/prometheus-rules"): Permission.USAGE_READ,
    ("GET", "/admin/alerts/export/grafana"): Permission.USAGE_READ,
    ("GET", "/admin/sla"): Permission.USAGE_READ,
    # Drift windows hold every tenant's traffic of a deployment: global figures, like /metrics.
    ("GET", "/admin/drift"): Permission.METRICS_READ,
    ("POST", "/admin/drift/{deployment}/reset-reference"): Permission.MONITOR_MANAGE,
    ("POST", "/tokenize"): Permission.INFERENCE,
    ("POST", "/detokenize"): Permission.INFERENCE,
    # The dashboard signs its callers in itself (a key or its session cookie; dashboard/routes.py).
    ("GET", "/dashboard"): PUBLIC,
    ("GET", "/dashboard/login"): PUBLIC,
    ("POST", "/dashboard/login"): PUBLIC,
    ("POST", "/dashboard/logout"): PUBLIC,
    ("GET", "/dashboard/deployments/{name}"): PUBLIC,
    ("GET", "/dashboard/cost"): PUBLIC,
    ("GET", "/dashboard/sla"): PUBLIC,
    ("GET", "/dashboard/quality"): PUBLIC,
    ("GET", "/dashboard/drift"): PUBLIC,
    ("GET", "/dashboard/alerts"): PUBLIC,
    ("GET", "/dashboard/review"): PUBLIC,
    ("GET", "/dashboard/review/export"): PUBLIC,
    ("POST", "/dashboard/review/{item_id}"): PUBLIC,
    ("GET", "/admin/whoami"): PUBLIC,  # any valid key (authenticated below, like every non-public route)
}
AUTHENTICATED_ONLY = {("GET", "/admin/whoami")}


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return conn.headers.get("api-key") or None


def check_permission(key: tuple[str, str], principal) -> None:
    """The route's policy for this caller (the request guard calls it for every route). A route
    without a policy is refused: forgetting to give one must not make it open."""
    if key not in ROUTE_PERMISSIONS:
        raise PermissionDenied("This route has no access policy.")
    permission = ROUTE_PERMISSIONS[key]
    if permission is not PUBLIC and not allows(principal.role, permission):
        raise PermissionDenied(refusal(principal.role, permission))


def caller_of(conn: HTTPConnection) -> Caller:
    caller = getattr(conn.state, "caller", None)
    if caller is None:
        raise AuthenticationError("Missing API key.")
    return caller


def services_of(conn: HTTPConnection):
    """The process's services (inference/services.py), which every route works with."""
    return conn.app.state.services


def principal_of(request: Request):
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise AuthenticationError("Missing API key.")
    return principal
