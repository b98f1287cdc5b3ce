"""What the monitors see, as JSON (the dashboard and operators read these).

- `GET /admin/monitor/health`: per deployment, latency percentiles, throughput, outcomes and live
  queue figures over a sliding window (monitor/health.py). Global figures across tenants, so
  admins and metrics-role keys only, like /metrics.
- `GET /admin/drift`, `POST /admin/drift/{deployment}/reset-reference`: each watched deployment's
  drift report (monitor/drift.py); global, like the health figures.
- `POST /admin/scores`, `GET /admin/scores`: the score store (monitor/scores.py). Tenant-scoped:
  a key writes and reads scores of its own tenant's requests only; admins see every tenant.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse

from shipyard.api.authorization import principal_of, services_of
from shipyard.api.errors import APIError, require
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.gateway.roles import Role, tenant_scope
from shipyard.monitor.gpu import gpu_stats
from shipyard.monitor.scores import ScoreIn, ScoreStore, UnknownRequest, is_system_score

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin", tags=["admin"])


@router.get("/monitor/health")
async def health(request: Request, deployment: str | None = None,
                 window_s: float = Query(300.0, ge=1.0, le=3600.0, description="seconds, up to an hour")):
    services = services_of(request)
    engines = services.router.engines()
    if deployment is not None:
        services.router.engine(deployment)  # 404 for an unknown model
    health = require(services.metrics.health, "Monitoring is off on this server (monitor.enabled: false).",
                     "monitoring_off")
    return {"object": "list", "data": health.summary(window_s, engines, deployment),
            "gpus": await asyncio.to_thread(gpu_stats)}


def _store(request: Request) -> ScoreStore:
    return ScoreStore(services_of(request).db)


@router.post("/scores", status_code=201)
async def add_scores(request: Request, scores: list[ScoreIn] = Body(min_length=1, max_length=100)):
    """Up to 100 scores of served requests. Only admins may write `monitor` or `eval` scores:
    others are the system's own measurements."""
    principal = principal_of(request)
    admin = principal.role == Role.ADMIN.value
    if not admin and any(s.source in ("monitor", "eval") for s in scores):
        raise APIError(400, "Only admins may write 'monitor' or 'eval' scores; use 'api' or 'annotation'.",
                       param="source", code="invalid_value")
    system = sorted({s.name for s in scores if is_system_score(s.name)})
    if not admin and system:
        raise APIError(403, f"The score name '{system[0]}' is the system's own (monitors, evaluations, shadow, "
                       "replays, reviews, feedback): only admins may write it. Use a name of your own.",
                       param="name", code="system_score")
    try:
        rows = await _store(request).add(scores, None if admin else principal.tenant_id)
    except UnknownRequest as exc:
        raise APIError(404, str(exc), param="request_id", code="request_not_found") from None
    except ValueError as exc:
        raise APIError(400, str(exc), param="value", code="invalid_value") from None
    return JSONResponse({"object": "list", "data": rows}, status_code=201)


@router.get("/scores")
async def list_scores(request: Request, deployment: str | None = None, name: str | None = None,
                      request_id: str | None = Query(None, max_length=160),
                      source: Literal["monitor", "eval", "annotation", "api", "feedback"] | None = None,
                      tenant_id: str | None = None, start: datetime | None = None, end: datetime | None = None,
                      limit: int = Query(100, ge=1, le=1000)):
    tenant_id = tenant_scope(principal_of(request), tenant_id, "read the scores")
    rows = await _store(request).query(tenant_id, deployment, name, request_id, source, start, end, limit)
    return {"object": "list", "data": rows}


def _drift(request: Request):
    monitor = services_of(request).monitor
    if monitor is None or monitor.drift is None:
        raise APIError(409, "No deployment's drift is watched (monitor.drift.deployments).", code="drift_off")
    return monitor.drift


@router.get("/drift")
async def drift(request: Request, deployment: str | None = None, evaluate: bool = False):
    """`evaluate=true` compares the windows now instead of returning the latest comparison."""
    watcher = _drift(request)
    names = watcher.settings.deployments
    if deployment is not None:
        services_of(request).router.engine(deployment)  # 404 for an unknown model
        if deployment not in names:
            raise APIError(409, f"The drift of '{deployment}' is not watched.", param="deployment",
                           code="drift_off")
        names = [deployment]
    if evaluate:
        await watcher.drain()
        await watcher.evaluate(force=True)
    return {"object": "list", "data": [watcher.status(name) for name in names], "dropped": watcher.dropped}


@router.post("/drift/{deployment}/reset-reference")
async def reset_reference(request: Request, deployment: str):
    """The current window becomes the reference: the operator accepts today's traffic as normal."""
    watcher = _drift(request)
    if deployment not in watcher.settings.deployments:
        raise APIError(404, f"The drift of '{deployment}' is not watched.", code="drift_off")
    if not await watcher.reset_reference(deployment):
        raise APIError(409, f"'{deployment}' has no traffic yet.", code="no_traffic")
    return watcher.status(deployment)
