"""What an experiment has done so far, from the stores every process shares: requests per arm, and
the shadow copies sent to the challenger (all of them and today's)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import case, func, select

from shipyard.experiments.registry import utc_today
from shipyard.experiments.spec import ExperimentSpec
from shipyard.store.models import ShadowRecord, UsageRecord


async def shadow_summary(db, spec: ExperimentSpec) -> dict:
    """The copies sent to the challenger: all of them and today's (UTC), from every process."""
    midnight = datetime.fromisoformat(utc_today()).replace(tzinfo=timezone.utc)
    tokens = ShadowRecord.prompt_tokens + ShadowRecord.completion_tokens
    ok = func.sum(case((ShadowRecord.status == 200, 1), else_=0))
    query = select(func.count(), ok, func.sum(tokens), func.sum(ShadowRecord.cost_usd),
                   func.sum(case((ShadowRecord.created_at >= midnight, tokens), else_=0)),
                   func.sum(case((ShadowRecord.created_at >= midnight, ShadowRecord.cost_usd), else_=0.0))
                   ).where(ShadowRecord.experiment == spec.name)
    async with db.session() as session:
        copies, answered, total, cost, today_tokens, today_cost = (await session.execute(query)).one()
    return {"copies": copies, "answered": int(answered or 0), "failed": copies - int(answered or 0),
            "tokens": int(total or 0), "cost_usd": float(cost or 0.0), "tokens_today": int(today_tokens or 0),
            "cost_usd_today": float(today_cost or 0.0), "capped_day": spec.shadow_capped_day}


async def arm_counts(db, spec: ExperimentSpec) -> dict[str, int]:
    """Requests served per arm (usage records carry the arm)."""
    variants = [f"{spec.name}/{a.name}" for a in spec.arms]
    query = (select(UsageRecord.variant, func.count()).where(UsageRecord.variant.in_(variants))
             .group_by(UsageRecord.variant))
    async with db.session() as session:
        rows = (await session.execute(query)).all()
    return {variant.split("/", 1)[1]: count for variant, count in rows}
