"""Admin routes over deployments and their replicas: see them, add and remove them live, drain
one and take it back.

Draining a replica sends it no new requests while the ones in flight finish (its streams run to
their end); `resume` puts it back in the pool. Admins only: replicas are shared infrastructure.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Body, Request
from pydantic import ValidationError

from shipyard.api.errors import APIError
from shipyard.api.authorization import principal_of, services_of
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.engines.api_specs import check_api_spec
from shipyard.routing.deployment import DeploymentEngine
from shipyard.routing.replica import ReplicaNameTaken

audit = logging.getLogger("shipyard.audit")
log = logging.getLogger("shipyard.api")

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin/deployments", tags=["admin"])


def _deployment(request: Request, name: str) -> DeploymentEngine:
    engine = services_of(request).router.engine(name)
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


@router.get("/{name}/plan")
async def deployment_plan(name: str, request: Request):
    """How `shipyard deploy` chose to serve this deployment: the plan, its reasons, the
    verification it passed and the converted file."""
    services_of(request).router.engine(name)  # 404 for an unknown model
    from shipyard.optimize.deploy import load_plan

    plan = load_plan(request.app.state.config.store.resolved_data_dir(), name)
    if plan is None:
        raise APIError(404, f"Deployment '{name}' was not made by `shipyard deploy`: it has no plan.",
                       code="not_found")
    return plan


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


@router.post("/{name}/replicas", status_code=201)
async def add_replica(name: str, request: Request, spec: dict[str, Any] = Body(...)):
    """The body is a replica as in shipyard.yaml (`engine: openai_http | triton | launch | transformers`);
    declared, so the request guard holds it to JSON (415) like every other body.

    `engine: launch` starts a program on this host: only with `server.api_launch: true`, only the
    known servers with their own programs and a vetted environment, and every one is audited."""
    deployment = _deployment(request, name)
    if deployment.make_replica is None:
        raise APIError(409, f"Replicas of '{name}' cannot be added here.", code="not_replicated")
    launch = spec.get("engine") == "launch"
    if launch and not services_of(request).api_launch:
        raise APIError(403, "Launching replicas over the API is off on this server (server.api_launch): it runs "
                       "programs on the gateway's host. Declare the replica in shipyard.yaml, or attach a "
                       "running server with engine: openai_http.", code="api_launch_disabled")
    try:
        replica = deployment.make_replica(spec, check_api_spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise APIError(400, f"Invalid replica: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                       code="invalid_value") from None
    except ValueError as exc:
        raise APIError(400, f"Invalid replica: {exc}", code="invalid_value") from None
    actor = principal_of(request).key_id
    try:
        await deployment.add_replica(replica)
    except ReplicaNameTaken as exc:
        raise APIError(409, str(exc), code="conflict") from None
    except Exception as exc:  # its model is not there, or is not a model: the spec's fault, not a store outage
        log.warning("replica %s of %s did not start: %s", replica.name, name, exc)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise APIError(400, f"Replica '{replica.name}' did not start: {first_line}"[:500],
                       code="replica_start_failed") from None
    finally:  # the audit names every attempt, whatever its outcome
        audit.warning("replica %s of %s added by key %s (%s): %s", replica.name, name, actor,
                      "running" if any(r is replica for r in deployment.replicas) else "refused", _audited(spec))
    return _view(name, deployment)


def _audited(spec: dict) -> dict:
    """The spec as the audit log keeps it: no credential."""
    return {k: ("***" if k in ("api_key", "headers") else v) for k, v in spec.items()}


@router.delete("/{name}/replicas/{replica}")
async def remove_replica(name: str, replica: str, request: Request):
    """Drains the replica, lets its in-flight requests finish (up to 60 s), stops and removes it."""
    deployment = _deployment(request, name)
    audit.warning("replica %s of %s removed by key %s", replica, name, principal_of(request).key_id)
    try:
        await deployment.remove_replica(replica)
    except KeyError:
        raise APIError(404, f"Deployment '{name}' has no replica '{replica}'.", code="not_found") from None
    except ValueError as exc:
        raise APIError(409, str(exc), code="conflict") from None
    return _view(name, deployment)


@router.get("/{name}/autoscaler")
async def autoscaler(name: str, request: Request):
    """The autoscaler's settings, replicas starting and draining, and its latest decisions with reasons."""
    _deployment(request, name)
    scaler = services_of(request).autoscalers.get(name)
    if scaler is None:
        raise APIError(409, f"'{name}' has no autoscaling.", code="not_autoscaled")
    return await scaler.view()
