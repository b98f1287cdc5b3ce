"""/admin/monitor: what the monitors see, as JSON (the dashboard and operators read these).

`GET /admin/monitor/health`: per deployment, latency percentiles, throughput, outcomes and live
queue figures over a sliding window (monitor/health.py). Global figures across tenants, so
admins and metrics-role keys only, like /metrics.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from shipyard.api.openai_routes import services_of

router = APIRouter(prefix="/admin/monitor", tags=["admin"])


@router.get("/health")
async def health(request: Request, deployment: str | None = None,
                 window_s: float = Query(300.0, ge=1.0, le=3600.0, description="seconds, up to an hour")):
    services = services_of(request)
    engines = services.router.engines()
    if deployment is not None:
        services.router.engine(deployment)  # 404 for an unknown model
    return {"object": "list", "data": services.metrics.health.summary(window_s, engines, deployment)}
