"""Usage totals per group (tenant, key, model, end user) over a time range: what the usage API,
the CLI and the dashboard report. Every figure is a sum of the usage records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from shipyard.gateway.usage import CACHE_HITS
from shipyard.store.db import Database
from shipyard.store.models import UsageRecord

GROUPS = ("tenant_id", "key_id", "model", "user")


async def usage_totals(db: Database, group_by: list[str], tenant_id: str | None = None, key_id: str | None = None,
                       model: str | None = None, user: str | None = None, start: datetime | None = None,
                       end: datetime | None = None) -> list[dict]:
    columns = [getattr(UsageRecord, g) for g in group_by if g in GROUPS]
    query = select(*columns, func.count().label("requests"),
                   func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
                   func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
                   func.coalesce(func.sum(UsageRecord.cached_tokens), 0).label("cached_tokens"),
                   func.count().filter(UsageRecord.cache.in_(CACHE_HITS)).label("cache_hits"),
                   func.coalesce(func.sum(UsageRecord.cost_usd), 0.0).label("cost_usd")).group_by(*columns)
    for column, value in (("tenant_id", tenant_id), ("key_id", key_id), ("model", model), ("user", user)):
        if value is not None:
            query = query.where(getattr(UsageRecord, column) == value)
    if start is not None:
        query = query.where(UsageRecord.created_at >= start)
    if end is not None:
        query = query.where(UsageRecord.created_at < end)
    async with db.session() as session:
        return [dict(r._mapping) for r in await session.execute(query)]
