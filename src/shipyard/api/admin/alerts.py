"""Alerts and SLAs over HTTP.

- `GET /admin/alerts`: what is firing now and the history (tenant-scoped: a tenant sees its own
  tenant's series only; admins see everything, global series included).
- `GET|POST /admin/alerts/rules`, `DELETE /admin/alerts/rules/{name}`: rules from shipyard.yaml
  (read-only here) and rules added at run time (stored; admins only).
- `GET /admin/alerts/export/prometheus-rules` and `/grafana`: the same, for one's own stack.
- `GET /admin/sla`: each SLO's compliance per day and over its period, and its burn rates.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from shipyard.api.authorization import principal_of, services_of
from shipyard.api.errors import APIError, require
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.gateway.roles import Role, tenant_scope
from shipyard.monitor.alert_store import RuleExists
from shipyard.monitor.export import grafana_dashboard, prometheus_rules
from shipyard.monitor.service import MonitorService
from shipyard.monitor.settings import AlertRule

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin", tags=["admin"])


def _monitor(request: Request) -> MonitorService:
    return require(services_of(request).monitor, "Monitoring is off on this server (monitor.enabled: false).",
                   "monitoring_off")


def _scope(request: Request, tenant_id: str | None) -> tuple[str | None, bool]:
    """(tenant to filter on, whether the caller is limited to it)."""
    principal = principal_of(request)
    return tenant_scope(principal, tenant_id, "read the alerts and SLAs"), principal.role != Role.ADMIN.value


@router.get("/alerts")
async def alerts(request: Request, status: Literal["firing", "resolved"] | None = None,
                 deployment: str | None = None, tenant_id: str | None = None,
                 limit: int = Query(100, ge=1, le=1000)):
    tenant, only = _scope(request, tenant_id)
    monitor = _monitor(request)
    history = await monitor.store.history(tenant, only, status, deployment, limit)
    active = await monitor.store.active(tenant, only)
    return {"object": "list", "active": active, "data": history}


@router.get("/alerts/rules")
async def list_rules(request: Request):
    monitor = _monitor(request)
    configured = [{**rule.model_dump(mode="json"), "origin": "config"} for rule in monitor.settings.alerts.rules]
    stored = [{**rule.model_dump(mode="json"), "origin": "api"} for rule in await monitor.store.rules()]
    return {"object": "list", "data": configured + stored}


@router.post("/alerts/rules", status_code=201)
async def add_rule(request: Request, rule: AlertRule):
    monitor = _monitor(request)
    if any(r.name == rule.name for r in monitor.settings.alerts.rules):
        raise APIError(409, f"The rule '{rule.name}' is set in shipyard.yaml.", param="name", code="rule_exists")
    if rule.deployment is not None and rule.deployment not in services_of(request).router.engines():
        raise APIError(404, f"The deployment '{rule.deployment}' does not exist.", param="deployment",
                       code="model_not_found")
    try:
        await monitor.store.add_rule(rule)
    except RuleExists:
        raise APIError(409, f"A rule named '{rule.name}' exists.", param="name", code="rule_exists") from None
    return JSONResponse({**rule.model_dump(mode="json"), "origin": "api"}, status_code=201)


@router.delete("/alerts/rules/{name}")
async def delete_rule(request: Request, name: str):
    monitor = _monitor(request)
    if any(r.name == name for r in monitor.settings.alerts.rules):
        raise APIError(409, f"The rule '{name}' is set in shipyard.yaml; remove it there.", code="rule_in_config")
    if not await monitor.store.delete_rule(name):
        raise APIError(404, f"No rule named '{name}'.", code="rule_not_found")
    return {"name": name, "deleted": True}


@router.get("/alerts/export/prometheus-rules")
async def export_prometheus(request: Request):
    monitor = _monitor(request)
    text = prometheus_rules(await monitor.rules(), list(monitor.sla.slos.values()))
    return PlainTextResponse(text, media_type="application/yaml")


@router.get("/alerts/export/grafana")
async def export_grafana(request: Request):
    _monitor(request)
    return grafana_dashboard()


@router.get("/sla")
async def sla(request: Request, slo: str | None = None, tenant_id: str | None = None,
              days: int | None = Query(None, ge=1, le=366)):
    tenant, only = _scope(request, tenant_id)
    monitor = _monitor(request)
    chosen = list(monitor.sla.slos.values())
    if slo is not None:
        chosen = [s for s in chosen if s.name == slo]
        if not chosen:
            raise APIError(404, f"No SLO named '{slo}'.", param="slo", code="slo_not_found")
    rows = []
    for each in chosen:
        row = await monitor.sla.compliance(each, tenant, days)
        if not only:  # burn rates are global: the whole deployment's traffic
            row["burn_rates"] = await monitor.sla.burn_rates(each)
        rows.append(row)
    return {"object": "list", "tenant_id": tenant, "data": rows}
