"""The review queue's items: list, claim, release, label, export.

Every change is guarded by the item's version (read, then `UPDATE … WHERE version = read`), so two
reviewers claiming at once cannot both win. A claim lapses after `claim_ttl_s` unlabelled. Only the
claimer labels. A tenant's reviewers (tenant-admin) see and label only their tenant's items;
another tenant's item is as unknown as a missing one.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator
from sqlalchemy import select, update

from shipyard.monitor.scores import ScoreIn, ScoreStore
from shipyard.store.models import ReviewItem

STATUSES = ("pending", "claimed", "labelled", "skipped")
MAX_TEXT = 20_000
LABEL_NAME = r"^[A-Za-z0-9_.-]{1,60}$"


class ReviewError(Exception):
    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.code = code


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    verdict: str = Field(pattern="^(good|bad)$", description="good: the answer may be trained on as it is")
    labels: dict[str, StrictBool | StrictInt | StrictFloat | StrictStr] = Field(
        default_factory=dict, description="more labels: each becomes the annotation score review.<name>")
    correction: str | None = Field(None, min_length=1, max_length=MAX_TEXT,
                                   description="the answer the reviewer wanted (exported instead of the answer)")
    comment: str | None = Field(None, max_length=MAX_TEXT)

    @model_validator(mode="after")
    def _labels(self) -> LabelIn:
        import re

        if len(self.labels) > 20:
            raise ValueError("at most 20 labels")
        for name, value in self.labels.items():
            if not re.match(LABEL_NAME, name):
                raise ValueError(f"label name '{name[:60]}': letters, digits, '.', '_' or '-', at most 60")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"label '{name}' must be finite")
            if isinstance(value, str) and len(value) > 200:
                raise ValueError(f"label '{name}' is at most 200 characters")
        return self


def item_view(row: ReviewItem, full: bool = True) -> dict:
    view = {"object": "review_item", "id": row.id, "request_id": row.request_id, "response_id": row.response_id,
            "tenant_id": row.tenant_id, "deployment": row.deployment, "reason": row.reason, "status": row.status,
            "claimed_by": row.claimed_by, "claimed_at": row.claimed_at.isoformat() if row.claimed_at else None,
            "labels": row.labels, "correction": row.correction, "labelled_by": row.labelled_by,
            "labelled_at": row.labelled_at.isoformat() if row.labelled_at else None,
            "created_at": row.created_at.isoformat(), "version": row.version}
    if full:
        view.update(messages=row.messages, answer=row.answer)
    return view


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


class ReviewItems:
    def __init__(self, db, claim_ttl_s: float = 1800.0):
        self.db = db
        self.claim_ttl_s = claim_ttl_s

    async def list(self, tenant_id: str | None, status: str | None = None, deployment: str | None = None,
                   limit: int = 50, after_id: int | None = None) -> list[ReviewItem]:
        query = select(ReviewItem)
        if tenant_id is not None:
            query = query.where(ReviewItem.tenant_id == tenant_id)
        if status is not None:
            query = query.where(ReviewItem.status == status)
        if deployment is not None:
            query = query.where(ReviewItem.deployment == deployment)
        if after_id is not None:
            query = query.where(ReviewItem.id > after_id)
        async with self.db.session() as session:
            return list((await session.execute(query.order_by(ReviewItem.id).limit(limit))).scalars().all())

    async def get(self, item_id: int, tenant_id: str | None) -> ReviewItem:
        query = select(ReviewItem).where(ReviewItem.id == item_id)
        if tenant_id is not None:
            query = query.where(ReviewItem.tenant_id == tenant_id)
        async with self.db.session() as session:
            row = (await session.execute(query)).scalars().first()
        if row is None:
            raise ReviewError(404, f"No review item {item_id}.", "not_found")
        return row

    def claim_lapsed(self, row: ReviewItem, now: datetime) -> bool:
        return row.claimed_at is None or _aware(row.claimed_at) + timedelta(seconds=self.claim_ttl_s) <= now

    async def _change(self, row: ReviewItem, values: dict) -> ReviewItem:
        async with self.db.session() as session:
            result = await session.execute(update(ReviewItem).where(ReviewItem.id == row.id,
                                                                    ReviewItem.version == row.version)
                                           .values(**values, version=row.version + 1))
            await session.commit()
        if result.rowcount != 1:
            raise ReviewError(409, f"Review item {row.id} changed meanwhile; read it again.", "conflict")
        return await self.get(row.id, None)

    async def claim(self, item_id: int, tenant_id: str | None, reviewer: str) -> ReviewItem:
        row = await self.get(item_id, tenant_id)
        now = datetime.now(timezone.utc)
        if row.status in ("labelled", "skipped"):
            raise ReviewError(409, f"Review item {item_id} is {row.status}.", "conflict")
        if row.status == "claimed" and row.claimed_by != reviewer and not self.claim_lapsed(row, now):
            raise ReviewError(409, f"Review item {item_id} is claimed by {row.claimed_by}.", "claimed")
        return await self._change(row, {"status": "claimed", "claimed_by": reviewer, "claimed_at": now})

    def _held_by(self, row: ReviewItem, reviewer: str) -> None:
        if row.status != "claimed" or row.claimed_by != reviewer or \
                self.claim_lapsed(row, datetime.now(timezone.utc)):
            raise ReviewError(409, f"Claim review item {row.id} first (it is {row.status}"
                              f"{' by ' + row.claimed_by if row.status == 'claimed' else ''}).", "not_claimed")

    async def release(self, item_id: int, tenant_id: str | None, reviewer: str) -> ReviewItem:
        row = await self.get(item_id, tenant_id)
        self._held_by(row, reviewer)
        return await self._change(row, {"status": "pending", "claimed_by": None, "claimed_at": None})

    async def skip(self, item_id: int, tenant_id: str | None, reviewer: str) -> ReviewItem:
        row = await self.get(item_id, tenant_id)
        self._held_by(row, reviewer)
        return await self._change(row, {"status": "skipped", "labelled_by": reviewer,
                                        "labelled_at": datetime.now(timezone.utc)})

    async def label(self, item_id: int, tenant_id: str | None, reviewer: str, body: LabelIn) -> ReviewItem:
        """Label a claimed item; the labels become annotation scores of the response."""
        row = await self.get(item_id, tenant_id)
        self._held_by(row, reviewer)
        store = ScoreStore(self.db)
        await store.request_owner(row.request_id, row.tenant_id)  # its record gone: refused before any change
        labels = {"verdict": body.verdict, **body.labels}
        updated = await self._change(row, {"status": "labelled", "labels": labels, "correction": body.correction,
                                           "labelled_by": reviewer, "labelled_at": datetime.now(timezone.utc)})
        scores = [ScoreIn(request_id=row.request_id, name="review.verdict", value=body.verdict == "good",
                          source="annotation", comment=body.comment)]
        scores += [ScoreIn(request_id=row.request_id, name=f"review.{name}", value=value, source="annotation")
                   for name, value in body.labels.items()]
        await store.add(scores, row.tenant_id, source="annotation")
        return updated

    async def export(self, tenant_id: str | None, deployment: str | None = None, since: datetime | None = None,
                     batch: int = 500):
        """Labelled items as OpenAI fine-tuning lines: {"messages": [...prompt, {"role": "assistant", ...}]}.
        The correction when there is one, else the answer if judged good; a bad answer without a
        correction is left out. Streamed in batches."""
        after = 0
        while True:
            query = select(ReviewItem).where(ReviewItem.status == "labelled", ReviewItem.id > after)
            if tenant_id is not None:
                query = query.where(ReviewItem.tenant_id == tenant_id)
            if deployment is not None:
                query = query.where(ReviewItem.deployment == deployment)
            if since is not None:
                query = query.where(ReviewItem.labelled_at >= since)
            async with self.db.session() as session:
                rows = (await session.execute(query.order_by(ReviewItem.id).limit(batch))).scalars().all()
            if not rows:
                return
            for row in rows:
                after = row.id
                target = row.correction or (row.answer if (row.labels or {}).get("verdict") == "good" else None)
                if target is None or not row.messages:
                    continue
                yield json.dumps({"messages": [*row.messages, {"role": "assistant", "content": target}]},
                                 ensure_ascii=False) + "\n"
