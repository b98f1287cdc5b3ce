"""The one score store: every evaluation of a request, whatever produced it.

A score is a row {request id, deployment, name, numeric / categorical / boolean value, source
(monitor | eval | annotation | api), comment, time}, kept with the request's tenant, so a tenant
only ever reads its own. Monitors, eval runs, human labels and user feedback all write here, and
every reader (admin API, dashboard, experiments) reads here. Each row is also given as
OpenTelemetry's `gen_ai.evaluation.result` event attributes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from sqlalchemy import delete, insert, or_, select
from sqlalchemy.exc import IntegrityError

from shipyard.aio import cancel_and_wait
from shipyard.store.db import Database
from shipyard.store.models import Score, UsageRecord

log = logging.getLogger("shipyard.monitor")

SOURCES = ("monitor", "eval", "annotation", "api", "feedback")
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
# Names the system's own measurements write (monitors, evals, shadow, replays, reviews, feedback):
# only admins may write them through the API, or a tenant could fire triggers, queue reviews and
# sway experiments with numbers of its own making.
SYSTEM_SCORES = frozenset({"mean_logprob", "min_logprob", "mean_entropy", "consistency_unigram",
                           "consistency_cosine", "faithfulness"})
SYSTEM_PREFIXES = ("shadow.", "eval.", "review.", "replay.", "feedback.", "implicit.")


def is_system_score(name: str) -> bool:
    return name in SYSTEM_SCORES or name.startswith(SYSTEM_PREFIXES)


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    request_id: str = Field(min_length=1, max_length=160)
    name: str = Field(pattern=NAME_PATTERN, description="e.g. relevance, thumbs, mean_logprob")
    value: StrictBool | StrictInt | StrictFloat | StrictStr = Field(
        description="a number, true/false, or a category (up to 200 characters)")
    source: Literal["monitor", "eval", "annotation", "api"] = "api"
    comment: str | None = Field(None, max_length=20_000)


class UnknownRequest(LookupError):
    pass


def _id_prefix(request_id: str) -> str:
    """LIKE pattern for a client's x-request-id, stored as `<id>/<suffix>` (its wildcards escaped)."""
    return request_id.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "/%"


def _columns(value) -> dict:
    if isinstance(value, bool):
        return {"kind": "boolean", "boolean": value}
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("a numeric score must be finite")
        return {"kind": "numeric", "numeric": float(value)}
    if len(value) > 200:
        raise ValueError("a categorical score is at most 200 characters")
    return {"kind": "categorical", "label": value}


def score_view(row: Score) -> dict:
    value = row.numeric if row.kind == "numeric" else row.boolean if row.kind == "boolean" else row.label
    otel = {"gen_ai.evaluation.name": row.name, "gen_ai.response.id": row.request_id}
    if row.kind == "numeric":
        otel["gen_ai.evaluation.score.value"] = row.numeric
    else:
        otel["gen_ai.evaluation.score.label"] = str(value).lower() if row.kind == "boolean" else value
    if row.comment:
        otel["gen_ai.evaluation.explanation"] = row.comment
    return {"id": row.id, "request_id": row.request_id, "tenant_id": row.tenant_id, "deployment": row.deployment,
            "name": row.name, "kind": row.kind, "value": value, "source": row.source, "comment": row.comment,
            "tags": row.tags or [], "created_at": row.created_at.isoformat(), "otel": {"event": "gen_ai.evaluation.result", **otel}}


class ScoreStore:
    def __init__(self, db: Database):
        self.db = db

    async def request_owner(self, request_id: str, tenant_id: str | None) -> tuple[str, str, str]:
        """(usage id, tenant, deployment) of a served request: the server's id, a client's
        `x-request-id` (its latest use), or the response's id (chatcmpl-…, cmpl-…). Another
        tenant's request is as unknown as a missing one."""
        query = (select(UsageRecord.request_id, UsageRecord.tenant_id, UsageRecord.model)
                 .where(or_(UsageRecord.request_id == request_id, UsageRecord.response_id == request_id,
                            UsageRecord.request_id.like(_id_prefix(request_id), escape="\\")))
                 .order_by(UsageRecord.created_at.desc()).limit(1))
        if tenant_id is not None:
            query = query.where(UsageRecord.tenant_id == tenant_id)
        async with self.db.session() as session:
            row = (await session.execute(query)).first()
        if row is None:
            raise UnknownRequest(f"No request '{request_id}' is known (its usage may take a second to be written).")
        return row[0], row[1], row[2]

    async def episode_latest(self, episode: str, tenant_id: str) -> str:
        """The usage id of an episode's latest response within the tenant."""
        query = (select(UsageRecord.request_id).where(UsageRecord.tenant_id == tenant_id,
                                                      UsageRecord.episode == episode)
                 .order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc()).limit(1))
        async with self.db.session() as session:
            row = (await session.execute(query)).first()
        if row is None:
            raise UnknownRequest(f"No episode '{episode}' is known.")
        return row[0]

    async def add(self, scores: list[ScoreIn], tenant_id: str | None, source: str | None = None,
                  tags: list[str] | None = None) -> list[dict]:
        """Store scores of requests the caller's tenant made (`tenant_id` None: any tenant)."""
        now = datetime.now(timezone.utc)
        owners: dict[str, tuple[str, str, str]] = {}  # one lookup per request, however many scores it gets
        rows = []
        for score in scores:
            if score.request_id not in owners:
                owners[score.request_id] = await self.request_owner(score.request_id, tenant_id)
            usage_id, owner, deployment = owners[score.request_id]
            rows.append(Score(request_id=usage_id, tenant_id=owner, deployment=deployment, name=score.name,
                              source=source or score.source, comment=score.comment, created_at=now, tags=tags,
                              **_columns(score.value)))
        async with self.db.session() as session:
            session.add_all(rows)
            await session.commit()
            return [score_view(row) for row in rows]

    async def vote(self, score: ScoreIn, tenant_id: str, voter: str, tags: list[str] | None = None) -> dict:
        """A piece of feedback: one per voter (API key), response and metric; a new one replaces the
        last, so a key cannot stuff the ballot on one response."""
        usage_id, owner, deployment = await self.request_owner(score.request_id, tenant_id)
        for attempt in range(3):  # two racing votes of one key: the loser replaces the winner's
            row = Score(request_id=usage_id, tenant_id=owner, deployment=deployment, name=score.name,
                        source="feedback", comment=score.comment, created_at=datetime.now(timezone.utc), tags=tags,
                        voter=voter, **_columns(score.value))
            try:
                async with self.db.session() as session:
                    await session.execute(delete(Score).where(Score.request_id == usage_id, Score.name == score.name,
                                                              Score.voter == voter))
                    session.add(row)
                    await session.commit()
                    return score_view(row)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def query(self, tenant_id: str | None, deployment: str | None = None, name: str | None = None,
                    request_id: str | None = None, source: str | None = None, start: datetime | None = None,
                    end: datetime | None = None, limit: int = 100) -> list[dict]:
        query = select(Score).order_by(Score.created_at.desc(), Score.id.desc()).limit(limit)
        for column, value in ((Score.tenant_id, tenant_id), (Score.deployment, deployment), (Score.name, name),
                              (Score.source, source)):
            if value is not None:
                query = query.where(column == value)
        if request_id is not None:  # the server's id, a client's x-request-id, or the response's id
            by_response = select(UsageRecord.request_id).where(UsageRecord.response_id == request_id)
            query = query.where(or_(Score.request_id == request_id, Score.request_id.in_(by_response),
                                    Score.request_id.like(_id_prefix(request_id), escape="\\")))
        if start is not None:
            query = query.where(Score.created_at >= start)
        if end is not None:
            query = query.where(Score.created_at < end)
        async with self.db.session() as session:
            return [score_view(row) for row in (await session.execute(query)).scalars()]


class ScoreWriter:
    """The monitors' scores, written in batches off the request path. While the database is away
    they wait in a bounded buffer (the oldest dropped past it, and counted)."""

    def __init__(self, db: Database, flush_interval_s: float = 0.5, max_buffered: int = 100_000):
        self.db = db
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.dropped = 0
        self._buffer: list[tuple] = []  # (request id, tenant, deployment, source, time, {name: value})
        self._task: asyncio.Task | None = None
        self._stopping = False

    def record(self, request_id: str, tenant_id: str, deployment: str, values: dict[str, float],
               source: str = "monitor") -> None:
        """On the request path: one tuple appended; the rows are built when flushed."""
        self._buffer.append((request_id, tenant_id, deployment, source, time.time(), values))
        if len(self._buffer) > self.max_buffered:
            excess = len(self._buffer) - self.max_buffered
            del self._buffer[:excess]
            self.dropped += excess

    @staticmethod
    def _rows(batch: list[tuple]) -> list[dict]:
        return [{"request_id": request_id, "tenant_id": tenant_id, "deployment": deployment, "name": name,
                 "source": source, "comment": None, "created_at": datetime.fromtimestamp(at, timezone.utc),
                 "kind": "numeric", "numeric": float(value), "label": None, "boolean": None}
                for request_id, tenant_id, deployment, source, at, values in batch for name, value in values.items()]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self._task)
        try:  # a frozen database must not hold up shutdown
            await asyncio.wait_for(self.flush(), 10)
        except asyncio.TimeoutError:
            log.warning("scores not written at shutdown: the database did not answer")

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            async with self.db.session() as session:
                await session.execute(insert(Score), self._rows(batch))
                await session.commit()
        except Exception as exc:  # kept for the next flush; never an error on the request path
            log.warning("score write failed (%s); %d scores kept for later", type(exc).__name__, len(batch))
            self._buffer = batch + self._buffer
