"""Admin routes over experiments: create, list, read (with the arms' traffic and its sample-ratio
check, the shadow copies, and the audit log), the decision report, replays of a stored dataset, and
the transitions: pause, resume, promote, roll back. Admins only: experiments move every tenant's
traffic."""

from __future__ import annotations

from fastapi import APIRouter, Body, Query, Request

from shipyard.api.authorization import services_of
from shipyard.api.errors import APIError, require
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.experiments.registry import ExperimentError, ExperimentRegistry
from shipyard.experiments.replay import ReplayBusy, ReplayIn
from shipyard.experiments.report import decision_report
from shipyard.experiments.spec import ExperimentSpec
from shipyard.experiments.statistics import DEFAULT_ALPHA, DEFAULT_MIN_SAMPLES, sample_ratio
from shipyard.experiments.status import arm_counts, shadow_summary
from shipyard.gateway.auth import Principal

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin/experiments", tags=["admin"])


def _registry(request: Request) -> ExperimentRegistry:
    return require(services_of(request).experiments, "This server runs no experiments (it keeps no store).",
                   "experiments_off")


def _actor(request: Request) -> str:
    principal: Principal = request.state.principal
    return principal.key_id


def _failed(exc: ExperimentError) -> APIError:
    return APIError(exc.status, str(exc), code=exc.code)


def _view(registry: ExperimentRegistry, spec: ExperimentSpec) -> dict:
    return {"object": "experiment", **spec.model_dump(mode="json"), "version": registry.versions.get(spec.name),
            "serving_weights": dict(zip((a.name for a in spec.arms), spec.serving_weights()))}


@router.get("")
async def list_experiments(request: Request):
    registry = _registry(request)
    await registry.refresh()
    return {"object": "list", "data": [_view(registry, s) for s in registry.specs.values()]}


@router.post("", status_code=201)
async def create_experiment(request: Request, spec: ExperimentSpec = Body(...)):
    registry = _registry(request)
    try:
        created = await registry.create(spec, _actor(request))
    except ExperimentError as exc:
        raise _failed(exc) from None
    return _view(registry, created)


@router.get("/{name}")
async def experiment_status(name: str, request: Request):
    registry = _registry(request)
    spec = await _spec(request, name)
    counts = await arm_counts(services_of(request).db, spec)
    srm = None
    if spec.mode == "ab" and spec.status in ("running", "paused"):  # fixed weights: the split must match them
        ratio = sample_ratio([counts.get(a.name, 0) for a in spec.arms], spec.serving_weights())
        srm = {"p_value": ratio.p_value, "mismatch": ratio.mismatch}
    return {**_view(registry, spec), "requests": counts, "sample_ratio": srm,
            "shadow": await shadow_summary(services_of(request).db, spec), "canary": _canary_analysis(request, spec),
            "events": await registry.events(name)}


def _canary_analysis(request: Request, spec: ExperimentSpec) -> dict | None:
    controller = services_of(request).canary
    if spec.mode != "canary" or controller is None:
        return None
    return {"steps": spec.canary.steps, "share": spec.serving_weights()[1], "last_analysis": controller.last.get(spec.name)}


@router.get("/{name}/report")
async def report(name: str, request: Request, alpha: float = Query(DEFAULT_ALPHA, gt=0, lt=0.5),
                 min_samples: int = Query(DEFAULT_MIN_SAMPLES, ge=2, le=1_000_000)):
    """The decision report: each metric's always-valid test with effect sizes and intervals, thumbs'
    probability to be best, the shadow pairs' agreement, and a recommendation."""
    spec = await _spec(request, name)
    return await decision_report(services_of(request).db, spec, alpha, min_samples)


@router.post("/{name}/replay", status_code=202)
async def replay(name: str, body: ReplayIn, request: Request):
    """Send a stored dataset to both arms (champion-challenger offline); runs in the background."""
    spec = await _spec(request, name)
    served = set(services_of(request).router.engines())
    missing = [a.deployment for a in spec.arms[:2] if a.deployment not in served]
    if missing:
        raise APIError(409, f"No deployment {', '.join(missing)} here to replay on.", code="conflict")
    try:
        return services_of(request).replays.start(spec, body).view()
    except ReplayBusy as exc:
        raise APIError(409, str(exc), code="conflict") from None


@router.get("/{name}/replays/{job_id}")
async def replay_status(name: str, job_id: str, request: Request):
    job = services_of(request).replays.jobs.get(job_id)
    if job is None or job.experiment != name:  # another process's job: its records are in the report
        raise APIError(404, f"No replay '{job_id}' of '{name}' in this server process.", code="not_found")
    return job.view()


async def _spec(request: Request, name: str) -> ExperimentSpec:
    registry = _registry(request)
    await registry.refresh()
    spec = registry.specs.get(name)
    if spec is None:
        raise APIError(404, f"No experiment named '{name}'.", code="not_found")
    return spec


@router.post("/{name}/{action}")
async def experiment_action(name: str, action: str, request: Request, body: dict | None = Body(None)):
    """pause (the split stays, nothing moves automatically), resume, promote (`{"arm": ...}`, default
    the first challenger: every request to it), rollback (every request to the champion). Checked
    against the stored experiment as the transition applies, so racing calls cannot both succeed."""
    wanted = (body or {}).get("arm")
    if wanted is not None and not isinstance(wanted, str):
        raise APIError(400, "'arm' is an arm's name.", param="arm", code="invalid_value")
    try:
        updated = await _registry(request).act(name, action, _actor(request), wanted)
    except ExperimentError as exc:
        raise _failed(exc) from None
    return _view(_registry(request), updated)
