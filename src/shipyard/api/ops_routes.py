"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from shipyard.api.authorization import services_of
from shipyard.api.errors import APIError
from shipyard.api.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)


@router.get("/health")
async def health(request: Request):
    """Liveness: the process answers and no engine loop has died."""
    engines = services_of(request).router.watched()
    for name, engine in engines.items():
        if not await engine.health():
            raise APIError(503, f"Engine for '{name}' is not healthy.", code="engine_unhealthy")
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request):
    """Readiness: 503 until every deployment's model is loaded."""
    services = services_of(request)
    models = {name: engine.ready() for name, engine in services.router.watched().items()}
    if not services.router.ready():
        return JSONResponse({"status": "loading", "models": models}, status_code=503, headers={"Retry-After": "1"})
    return {"status": "ready", "models": models}


@router.get("/metrics")
async def metrics(request: Request):
    return Response(services_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
