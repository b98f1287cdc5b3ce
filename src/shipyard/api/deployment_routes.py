"""Admin routes over deployments and their replicas: see them, drain one, take it back.

Draining a replica sends it no new requests while the ones in flight finish (its streams run to
their end); `resume` puts it back in the pool. Admins only: replicas are shared infrastructure.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from shipyard.api.errors import APIError
from shipyard.api.openai_routes import services_of
from shipyard.routing.deployment import DeploymentEngine

router = APIRouter(prefix="/admin/deployments", tags=["admin"])


def _deployment(request: Request, name: str) -> DeploymentEngine:
    engine = services_of(request).router.resolve(name)
    if not isinstance(engine, DeploymentEngine):
        raise APIError(409, f"'{name}' is a single in-process engine, not a deployment of replicas.",
                       code="not_replicated")
    return engine


def _view(name: str, engine) -> dict:
    if not isinstance(engine, DeploymentEngine):
        return {"name": name, "replicas": [{"name": name, "engine": "transformers", "ready": engine.ready()}]}
    state = engine.routing_snapshot()
    replicas = [{**replica, "engine": type(r.engine).__name__, "ready": r.engine.ready(), "weight": r.weight,
                 "min_tier": r.min_tier, "load": r.load()}
                for replica, r in zip(state["replicas"], engine.replicas)]
    return {"name": name, "balancer": engine.balancer.strategy, "fallback": engine.fallbacks,
            "counters": state["counters"], "replicas": replicas}


@router.get("")
async def list_deployments(request: Request):
    engines = services_of(request).router.engines()
    return {"object": "list", "data": [_view(name, engine) for name, engine in engines.items()]}


def _set_draining(request: Request, name: str, replica: str, draining: bool) -> dict:
    deployment = _deployment(request, name)
    try:
        deployment.replica(replica).draining = draining
    except KeyError:
        raise APIError(404, f"Deployment '{name}' has no replica '{replica}'.", code="not_found") from None
    return _view(name, deployment)


@router.post("/{name}/replicas/{replica}/drain")
async def drain_replica(name: str, replica: str, request: Request):
    return _set_draining(request, name, replica, True)


@router.post("/{name}/replicas/{replica}/resume")
async def resume_replica(name: str, replica: str, request: Request):
    return _set_draining(request, name, replica, False)
