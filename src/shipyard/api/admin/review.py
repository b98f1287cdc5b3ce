"""The human review queue's admin API: list, read, claim, release, skip and label items, and export
the labelled ones as OpenAI fine-tuning JSONL. Admins see every tenant's items (or one, with
`tenant_id`); a tenant-admin sees only its own tenant's, and another tenant's item is a 404."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse

from shipyard.api.authorization import principal_of, services_of
from shipyard.api.errors import APIError, require
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.experiments.review_items import STATUSES, LabelIn, ReviewError, ReviewItems, item_view
from shipyard.gateway.roles import tenant_scope
from shipyard.monitor.scores import UnknownRequest

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin/review", tags=["admin"])
# An item id in a path is a database integer: a larger one is a 400, never a database error
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _items(request: Request) -> ReviewItems:
    db = require(services_of(request).db, "This server keeps no review queue (it keeps no store).", "review_off")
    return ReviewItems(db, request.app.state.config.review.claim_ttl_s)


def _scope(request: Request, tenant_id: str | None = None) -> str | None:
    """The tenant whose items the caller may see: any (None) for admins, else their own."""
    return tenant_scope(principal_of(request), tenant_id, "review the responses")


def _failed(exc: ReviewError) -> APIError:
    return APIError(exc.status, str(exc), code=exc.code)


@router.get("")
async def list_items(request: Request, status: Literal["pending", "claimed", "labelled", "skipped"] | None = None,
                     deployment: str | None = None, tenant_id: str | None = None,
                     after_id: int | None = Query(None, ge=0), limit: int = Query(50, ge=1, le=500)):
    rows = await _items(request).list(_scope(request, tenant_id), status, deployment, limit, after_id)
    return {"object": "list", "data": [item_view(r) for r in rows], "statuses": list(STATUSES)}


@router.get("/export")
async def export(request: Request, deployment: str | None = None, tenant_id: str | None = None,
                 since: datetime | None = None):
    """Labelled items, one OpenAI fine-tuning example a line (application/jsonl)."""
    lines = _items(request).export(_scope(request, tenant_id), deployment, since)
    return StreamingResponse(lines, media_type="application/jsonl",
                             headers={"content-disposition": 'attachment; filename="review.jsonl"'})


@router.get("/{item_id}")
async def read_item(item_id: ItemId, request: Request):
    try:
        return item_view(await _items(request).get(item_id, _scope(request)))
    except ReviewError as exc:
        raise _failed(exc) from None


@router.post("/{item_id}/label")
async def label_item(item_id: ItemId, body: LabelIn, request: Request):
    reviewer = principal_of(request).key_id
    try:
        return item_view(await _items(request).label(item_id, _scope(request), reviewer, body))
    except ReviewError as exc:
        raise _failed(exc) from None
    except UnknownRequest:  # its usage row is gone (retention): nothing was changed
        raise APIError(404, "The reviewed response's record is gone.", code="response_not_found") from None


@router.post("/{item_id}/{action}")
async def item_action(item_id: ItemId, action: str, request: Request):
    """claim (a lapsed or released claim can be taken), release, skip."""
    if action not in ("claim", "release", "skip"):
        raise APIError(404, f"No action '{action}': claim, release, skip or label.", code="not_found")
    reviewer = principal_of(request).key_id
    items = _items(request)
    try:
        row = await getattr(items, action)(item_id, _scope(request), reviewer)
    except ReviewError as exc:
        raise _failed(exc) from None
    return item_view(row)
