"""`POST /v1/feedback`: a user's verdict on a response, into the score store (experiments read it
there). Any key that may call the models may send it, for its own tenant's responses only."""

from __future__ import annotations

from fastapi import APIRouter, Request

from shipyard.api.authorization import caller_of, services_of
from shipyard.api.errors import APIError, require
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.experiments.feedback import FeedbackIn, InvalidFeedback, to_score
from shipyard.monitor.scores import ScoreStore, UnknownRequest

router = APIRouter(route_class=StrictJSONRoute, tags=["feedback"])


@router.post("/v1/feedback")
async def feedback(body: FeedbackIn, request: Request):
    services = services_of(request)
    require(services.db, "This server keeps no responses to give feedback on.", "feedback_off")
    try:
        score = to_score(body, request.app.state.config.feedback)
    except InvalidFeedback as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None
    principal = caller_of(request).principal
    tenant = principal.tenant_id
    await services.gateway.count_call(principal, "feedback", request.app.state.config.feedback.max_per_minute)
    store = ScoreStore(services.db)

    async def save() -> dict:
        if body.episode_id is not None:
            score.request_id = await store.episode_latest(body.episode_id, tenant)
        return await store.vote(score, tenant, principal.key_id, tags=body.tags)

    try:
        try:
            row = await save()
        except UnknownRequest:  # answered a moment ago: its usage row may still be in this process's buffer
            meter = services.gateway.meter
            if meter is None:
                raise
            await meter.flush()
            row = await save()
    except UnknownRequest:
        if body.episode_id is not None:
            raise APIError(404, f"No episode '{body.episode_id}' is known.", param="episode_id",
                           code="episode_not_found") from None
        raise APIError(404, f"No response '{body.response_id}' is known.", param="response_id",
                       code="response_not_found") from None
    return {"object": "feedback", "id": f"fb-{row['id']}", "response_id": body.response_id,
            "episode_id": body.episode_id, "request_id": row["request_id"], "metric": body.metric or row["name"],
            "value": row["value"], "deployment": row["deployment"], "created_at": row["created_at"]}
