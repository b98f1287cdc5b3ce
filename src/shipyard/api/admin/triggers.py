"""Retraining triggers, read-only: each trigger as configured with its latest evaluation, and its
append-only audit (every evaluation, fired or suppressed, and every action's outcome). Admins only:
triggers watch every tenant's scores."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from shipyard.api.authorization import services_of
from shipyard.api.errors import APIError, require
from shipyard.api.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin/triggers", tags=["admin"])


def _triggers(request: Request):
    return require(services_of(request).triggers, "This server evaluates no retraining triggers (it keeps no store).",
                   "triggers_off")


@router.get("")
async def list_triggers(request: Request):
    triggers = _triggers(request)
    data = []
    for spec in triggers.config.triggers:
        latest = await triggers.history(spec.name, limit=1)
        data.append({"object": "retraining_trigger", "name": spec.name, "kind": spec.kind,
                     **spec.model_dump(mode="json", exclude={"name", "action"}),
                     "action": "webhook" if spec.action.webhook else "command",
                     "latest": latest[0] if latest else None})
    return {"object": "list", "interval_s": triggers.config.interval_s, "data": data}


@router.get("/{name}/evaluations")
async def evaluations(name: str, request: Request, limit: int = Query(100, ge=1, le=1000),
                      before: int | None = Query(None, ge=1)):
    triggers = _triggers(request)
    if name not in {t.name for t in triggers.config.triggers}:
        raise APIError(404, f"No retraining trigger named '{name}'.", code="not_found")
    return {"object": "list", "data": await triggers.history(name, limit, before)}
