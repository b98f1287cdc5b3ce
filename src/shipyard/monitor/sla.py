"""SLA compliance and error-budget burn rates, from the usage records.

An SLO says which requests are good (not a 5xx; TTFT and latency within bounds where set) and
what share must be (`objective`) over `period_days`. The usage table already holds every
inference request's status, TTFT and latency, in every gateway process and across restarts, so
compliance is counted there rather than in one process's memory.

Burn rate = the window's bad share ÷ the error budget (1 − objective): 1 spends the budget exactly
over the period. Alerts follow the Google SRE workbook's multi-window, multi-burn-rate policy: a
long window shows the burn is significant, a short one (1/12 of it) that it is still happening:

| severity | long window | short window | burn rate |
|---|---|---|---|
| page | 1 h | 5 min | 14.4 (2% of a 30-day budget in an hour) |
| page | 6 h | 30 min | 6 (5% in six hours) |
| ticket | 3 d | 6 h | 1 (10% in three days) |

and `min_bad_events` bad requests in the long window: one error on thin traffic is not a page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, case, func, or_, select

from shipyard.monitor.settings import SLO
from shipyard.store.db import Database
from shipyard.store.models import UsageRecord

HOUR = 3600.0


@dataclass(frozen=True)
class BurnWindow:
    severity: str
    long_s: float
    short_s: float
    factor: float

    @property
    def name(self) -> str:
        return f"{_span(self.long_s)}/{_span(self.short_s)}"


BURN_WINDOWS = (BurnWindow("page", HOUR, HOUR / 12, 14.4), BurnWindow("page", 6 * HOUR, HOUR / 2, 6.0),
                BurnWindow("ticket", 72 * HOUR, 6 * HOUR, 1.0))


def _span(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g}d"
    if seconds >= HOUR:
        return f"{seconds / HOUR:g}h"
    return f"{seconds / 60:g}m"


def _bad(slo: SLO):
    conditions = [UsageRecord.status >= 500]
    if slo.ttft_ms is not None:
        conditions.append(UsageRecord.ttft_ms > slo.ttft_ms)
    if slo.latency_ms is not None:
        conditions.append(UsageRecord.latency_ms > slo.latency_ms)
    return or_(*conditions)


class SLAMonitor:
    def __init__(self, db: Database, slos: list[SLO]):
        self.db = db
        self.slos = {slo.name: slo for slo in slos}

    async def counts(self, slo: SLO, start: datetime, end: datetime, tenant_id: str | None = None) -> tuple[int, int]:
        """(requests, bad requests) in [start, end)."""
        query = select(func.count(), func.coalesce(func.sum(case((_bad(slo), 1), else_=0)), 0)).where(
            and_(UsageRecord.created_at >= start, UsageRecord.created_at < end))
        if slo.deployment is not None:
            query = query.where(UsageRecord.model == slo.deployment)
        if tenant_id is not None:
            query = query.where(UsageRecord.tenant_id == tenant_id)
        async with self.db.session() as session:
            total, bad = (await session.execute(query)).one()
        return int(total), int(bad)

    async def burn_rates(self, slo: SLO, now: datetime | None = None) -> list[dict]:
        """Each window pair's burn rates, and whether it alerts."""
        now = now or datetime.now(timezone.utc)
        budget = 1.0 - slo.objective
        rows = []
        for window in BURN_WINDOWS:
            figures = {}
            for span, seconds in (("long", window.long_s), ("short", window.short_s)):
                total, bad = await self.counts(slo, now - timedelta(seconds=seconds), now + timedelta(seconds=1))
                figures[span] = (total, bad, (bad / total) / budget if total else 0.0)
            long_total, long_bad, long_burn = figures["long"]
            short_burn = figures["short"][2]
            rows.append({"window": window.name, "severity": window.severity, "factor": window.factor,
                         "long_burn_rate": long_burn, "short_burn_rate": short_burn,
                         "requests": long_total, "bad": long_bad,
                         "alerting": long_burn >= window.factor and short_burn >= window.factor
                         and long_bad >= slo.min_bad_events})
        return rows

    async def compliance(self, slo: SLO, tenant_id: str | None = None, days: int | None = None,
                         now: datetime | None = None) -> dict:
        """Per day and over the whole period: the good share against the objective, and the error
        budget left (1: untouched; 0: spent; negative: overspent)."""
        now = now or datetime.now(timezone.utc)
        days = days or max(1, round(slo.period_days))
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        periods = []
        total = bad = 0
        for back in range(days - 1, -1, -1):
            start = today - timedelta(days=back)
            n, b = await self.counts(slo, start, start + timedelta(days=1), tenant_id)
            total, bad = total + n, bad + b
            periods.append({"date": start.date().isoformat(), "requests": n, "bad": b,
                            "compliance": (n - b) / n if n else None})
        compliance = (total - bad) / total if total else None
        budget = 1.0 - slo.objective
        return {"slo": slo.name, "deployment": slo.deployment, "objective": slo.objective,
                "period_days": slo.period_days, "ttft_ms": slo.ttft_ms, "latency_ms": slo.latency_ms,
                "requests": total, "bad": bad, "compliance": compliance,
                "met": compliance is None or compliance >= slo.objective,
                "error_budget_remaining": 1.0 - (bad / total) / budget if total else 1.0,
                "periods": periods}
