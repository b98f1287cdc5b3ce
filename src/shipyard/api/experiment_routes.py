"""Admin routes over experiments: create, list, read (with the arms' traffic and its sample-ratio
check, the shadow copies, and the audit log), the decision report, replays of a stored dataset, and
the transitions: pause, resume, promote, roll back. Admins only: experiments move every tenant's
traffic."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Body, Query, Request
from shipyard.api.strict_json import StrictJSONRoute
from sqlalchemy import case, func, select

from shipyard.api.authorization import services_of
from shipyard.api.errors import APIError
from shipyard.experiments.registry import ExperimentError, ExperimentRegistry, utc_today
from shipyard.experiments.replay import ReplayBusy, ReplayIn
from shipyard.experiments.report import decision_report
from shipyard.experiments.spec import ExperimentSpec
from shipyard.experiments.statistics import DEFAULT_ALPHA, DEFAULT_MIN_SAMPLES, sample_ratio
from shipyard.gateway.auth import Principal
from shipyard.store.models import ShadowRecord, UsageRecord

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin/experiments", tags=["admin"])


def _registry(request: Request) -> ExperimentRegistry:
    registry = services_of(request).experiments
    if registry is None:
        raise APIError(409, "This server runs no experiments (it keeps no store).", code="experiments_off")
    return registry


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
    counts = await _arm_counts(request, spec)
    srm = None
    if spec.mode == "ab" and spec.status in ("running", "paused"):  # fixed weights: the split must match them
        ratio = sample_ratio([counts.get(a.name, 0) for a in spec.arms], spec.serving_weights())
        srm = {"p_value": ratio.p_value, "mismatch": ratio.mismatch}
    return {**_view(registry, spec), "requests": counts, "sample_ratio": srm,
            "shadow": await _shadow_summary(request, spec), "canary": _canary_analysis(request, spec),
            "events": await registry.events(name)}


def _canary_analysis(request: Request, spec: ExperimentSpec) -> dict | None:
    controller = services_of(request).canary
    if spec.mode != "canary" or controller is None:
        return None
    return {"steps": spec.canary.steps, "share": spec.serving_weights()[1], "last_analysis": controller.last.get(spec.name)}


async def _shadow_summary(request: Request, spec: ExperimentSpec) -> dict:
    """The copies sent to the challenger: all of them and today's (UTC), from every process."""
    midnight = datetime.fromisoformat(utc_today()).replace(tzinfo=timezone.utc)
    tokens = ShadowRecord.prompt_tokens + ShadowRecord.completion_tokens
    ok = func.sum(case((ShadowRecord.status == 200, 1), else_=0))
    query = select(func.count(), ok, func.sum(tokens), func.sum(ShadowRecord.cost_usd),
                   func.sum(case((ShadowRecord.created_at >= midnight, tokens), else_=0)),
                   func.sum(case((ShadowRecord.created_at >= midnight, ShadowRecord.cost_usd), else_=0.0))
                   ).where(ShadowRecord.experiment == spec.name)
    async with services_of(request).db.session() as session:
        copies, answered, total, cost, today_tokens, today_cost = (await session.execute(query)).one()
    return {"copies": copies, "answered": int(answered or 0), "failed": copies - int(answered or 0),
            "tokens": int(total or 0), "cost_usd": float(cost or 0.0), "tokens_today": int(today_tokens or 0),
            "cost_usd_today": float(today_cost or 0.0), "capped_day": spec.shadow_capped_day}


async def _arm_counts(request: Request, spec: ExperimentSpec) -> dict[str, int]:
    variants = [f"{spec.name}/{a.name}" for a in spec.arms]
    query = (select(UsageRecord.variant, func.count()).where(UsageRecord.variant.in_(variants))
             .group_by(UsageRecord.variant))
    async with services_of(request).db.session() as session:
        rows = (await session.execute(query)).all()
    return {variant.split("/", 1)[1]: count for variant, count in rows}


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
    if action not in ("pause", "resume", "promote", "rollback"):
        raise APIError(404, f"No action '{action}': pause, resume, promote or rollback.", code="not_found")
    wanted = (body or {}).get("arm")
    if wanted is not None and not isinstance(wanted, str):
        raise APIError(400, "'arm' is an arm's name.", param="arm", code="invalid_value")
    detail: dict = {}

    def change(spec: ExperimentSpec) -> ExperimentSpec:
        if spec.status in ("promoted", "rolled_back"):
            raise ExperimentError(409, f"'{spec.name}' has ended ({spec.status}); create a new experiment.",
                                  "conflict")
        if action == "pause" and spec.status == "paused" or action == "resume" and spec.status == "running":
            raise ExperimentError(409, f"'{spec.name}' is {spec.status} already.", "conflict")
        if action == "promote":
            arm = wanted or spec.arms[1].name
            if arm not in [a.name for a in spec.arms]:
                raise ExperimentError(400, f"'{spec.name}' has no arm '{arm}'.", "invalid_value")
            detail["arm"] = arm
            return spec.model_copy(update={"status": "promoted", "promoted_arm": arm})
        status = {"pause": "paused", "resume": "running", "rollback": "rolled_back"}[action]
        return spec.model_copy(update={"status": status})

    try:
        updated = await _registry(request).transition(name, action, _actor(request), change, detail)
    except ExperimentError as exc:
        raise _failed(exc) from None
    return _view(_registry(request), updated)
