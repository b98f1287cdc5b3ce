"""What the dashboard shows, read from the stores every gateway process shares (usage records,
scores, alert history) and always narrowed to the viewer's tenant unless the viewer is an admin.
Live engine state (queues, KV cache, GPU) and drift are global figures: admins only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import select

from shipyard.gateway.keystore import aware
from shipyard.gateway.roles import tenant_scope
from shipyard.gateway.usage_report import usage_totals
from shipyard.store.db import Database
from shipyard.store.models import Score, UsageRecord

MAX_ROWS = 50_000  # the newest records in the window; enough for percentiles per step


@dataclass
class Viewer:
    key_id: str
    tenant_id: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """The tenant the viewer's data is limited to (None: every tenant), as for every admin route."""
        return tenant_scope(self, None, "read the data")


def _steps(window_s: float, step_s: float, now: datetime) -> tuple[datetime, int]:
    count = max(1, math.ceil(window_s / step_s))
    return now - timedelta(seconds=count * step_s), count


def _step_of(created: datetime, start: datetime, step_s: float, count: int) -> int:
    """Which step of the window a row falls in (SQLite gives naive UTC times)."""
    return min(count - 1, max(0, int((aware(created) - start).total_seconds() // step_s)))


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def traffic(db: Database, tenant: str | None, deployment: str | None = None, window_s: float = 3600,
                  step_s: float = 60) -> dict:
    """Per step: requests, errors, TTFT and latency percentiles, tokens, cost; and the window's totals."""
    now = datetime.now(timezone.utc)
    start, count = _steps(window_s, step_s, now)
    query = (select(UsageRecord.created_at, UsageRecord.status, UsageRecord.ttft_ms, UsageRecord.latency_ms,
                    UsageRecord.prompt_tokens, UsageRecord.completion_tokens, UsageRecord.cost_usd)
             .where(UsageRecord.created_at >= start).order_by(UsageRecord.created_at.desc()).limit(MAX_ROWS))
    if tenant is not None:
        query = query.where(UsageRecord.tenant_id == tenant)
    if deployment is not None:
        query = query.where(UsageRecord.model == deployment)
    async with db.session() as session:
        rows = (await session.execute(query)).all()
    buckets = [{"requests": 0, "errors": 0, "ttft": [], "latency": [], "tokens": 0, "cost": 0.0} for _ in range(count)]
    for created, status, ttft, latency, prompt, completion, cost in rows:
        bucket = buckets[_step_of(created, start, step_s, count)]
        bucket["requests"] += 1
        bucket["errors"] += status >= 500
        if ttft is not None and status < 400:
            bucket["ttft"].append(ttft)
        if status < 400:
            bucket["latency"].append(latency)
        bucket["tokens"] += prompt + completion
        bucket["cost"] += cost
    x = [i * step_s / 60 - window_s / 60 for i in range(count)]  # minutes before now
    ttft_all = [v for b in buckets for v in b["ttft"]]
    latency_all = [v for b in buckets for v in b["latency"]]
    requests = sum(b["requests"] for b in buckets)
    return {
        "x": x,
        "start": start, "end": now,
        "requests": [b["requests"] for b in buckets],
        "errors": [b["errors"] for b in buckets],
        "ttft": {f"p{q}": [_percentile(b["ttft"], q) for b in buckets] for q in (50, 95, 99)},
        "latency_p95": [_percentile(b["latency"], 95) for b in buckets],
        "tokens": [b["tokens"] for b in buckets],
        "totals": {"requests": requests, "errors": sum(b["errors"] for b in buckets),
                   "error_rate": sum(b["errors"] for b in buckets) / requests if requests else 0.0,
                   "ttft_p95_ms": _percentile(ttft_all, 95), "latency_p95_ms": _percentile(latency_all, 95),
                   "tokens": sum(b["tokens"] for b in buckets), "cost_usd": sum(b["cost"] for b in buckets)},
        "truncated": len(rows) == MAX_ROWS,
    }


async def score_series(db: Database, tenant: str | None, window_s: float = 86400, step_s: float = 3600,
                       deployment: str | None = None) -> dict[str, dict]:
    """Numeric scores' mean per step, per score name (quality, confidence, consistency over time)."""
    now = datetime.now(timezone.utc)
    start, count = _steps(window_s, step_s, now)
    query = (select(Score.name, Score.created_at, Score.numeric, Score.boolean, Score.kind)
             .where(Score.created_at >= start, Score.kind.in_(("numeric", "boolean")))
             .order_by(Score.created_at.desc()).limit(MAX_ROWS))
    if tenant is not None:
        query = query.where(Score.tenant_id == tenant)
    if deployment is not None:
        query = query.where(Score.deployment == deployment)
    async with db.session() as session:
        rows = (await session.execute(query)).all()
    sums: dict[str, list[list[float]]] = {}
    for name, created, numeric, boolean, kind in rows:
        value = numeric if kind == "numeric" else float(boolean)
        slots = sums.setdefault(name, [[] for _ in range(count)])
        slots[_step_of(created, start, step_s, count)].append(value)
    x = [i * step_s / 3600 - window_s / 3600 for i in range(count)]  # hours before now
    return {name: {"x": x, "start": start, "end": now, "mean": [sum(s) / len(s) if s else None for s in slots],
                   "count": sum(len(s) for s in slots),
                   "latest": next((sum(s) / len(s) for s in reversed(slots) if s), None)}
            for name, slots in sorted(sums.items())}


def _period_start(period: str, now: datetime) -> datetime:
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start if period == "day" else start.replace(day=1)


async def owners(keystore, tenant: str | None) -> tuple[list, list, dict[str, str]]:
    """The tenants and keys in view, and their ids → the names people gave them ("name (id)")."""
    tenants = await keystore.list_tenants(tenant)
    keys = await keystore.list_keys(tenant)
    names = {t.id: f"{t.name} ({t.id})" if t.name and t.name != t.id else t.id for t in tenants}
    names.update({k.id: f"{k.name} ({k.id})" if k.name else k.id for k in keys})
    return tenants, keys, names


async def budgets(db: Database, tenant: str | None, tenants: list, keys: list, names: dict[str, str]) -> list[dict]:
    """Every budget in view with what was spent of it this period (its usage records, as the
    limiter counts them): one usage sum per period and grouping, however many budgets there are."""
    now = datetime.now(timezone.utc)
    held = [("tenant", "tenant_id", row) for row in tenants if row.budget_usd is not None]
    held += [("key", "key_id", row) for row in keys if row.budget_usd is not None]
    spent: dict[tuple[str, str, str], float] = {}
    for period in {row.budget_period or "month" for _, _, row in held}:
        for column in {column for _, column, _ in held}:
            for total in await usage_totals(db, [column], tenant, start=_period_start(period, now)):
                spent[(period, column, total[column])] = total["cost_usd"]
    return [{"whose": whose, "name": names[row.id], "budget_usd": row.budget_usd,
             "period": row.budget_period or "month",
             "spent_usd": spent.get((row.budget_period or "month", column, row.id), 0.0)}
            for whose, column, row in held]
