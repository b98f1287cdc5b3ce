"""Retraining triggers: evaluated every `interval_s`, fired once per condition, audited always.

Each evaluation observes the trigger's condition (a cron time come due, a score's mean against a
threshold, the drift monitor's share, feedback piling up), then decides:

- **debounce**: the condition must have held in `m` of the last `n` evaluations;
- **once per condition**: having fired, the trigger stays quiet until the debounced condition has
  been false once (it re-arms);
- **cooldown**: and never fires twice within `cooldown_s`.

Every evaluation is one row of `trigger_evaluations`, fired or suppressed with its reason, and so
is each action's outcome; the table is append-only (the database refuses changes). The row is
unique per (trigger, slot = time ÷ interval): with several server processes, the one whose insert
lands evaluates that slot and acts, the others skip it. History is read from the same table, so
debounce and cooldown hold across processes and restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError

from shipyard.aio import cancel_and_wait, every
from shipyard.experiments.feedback import is_feedback
from shipyard.experiments.trigger_actions import data_links, idempotency_key, run_command, send_webhook
from shipyard.experiments.trigger_spec import RetrainingConfig, TriggerSpec
from shipyard.store.models import Score, TriggerEvaluation

log = logging.getLogger("shipyard.retraining")


@dataclass
class Observation:
    condition: bool | None  # None: no data (too few samples, no drift report yet)
    observed: float | None
    threshold: float | None
    detail: dict = field(default_factory=dict)


@dataclass
class Past:
    """What a decision needs from the audit: the latest conditions, and the last firing."""

    conditions: list[bool | None]  # newest first, up to n - 1
    last_fired_at: float | None = None  # epoch seconds
    rearmed: bool = True  # the debounced condition was false at some evaluation since the last firing
    first_seen: float | None = None  # the trigger's first evaluation (epoch seconds)


def decide(spec: TriggerSpec, observation: Observation, past: Past, now: float) -> tuple[bool, str, str]:
    """(met, outcome, reason): outcome is `fired` or `suppressed`."""
    window = [observation.condition, *past.conditions[:spec.debounce.n - 1]]
    held = sum(c is True for c in window)
    met = held >= spec.debounce.m
    if observation.condition is None:
        return False, "suppressed", f"no data: {observation.detail.get('why', 'nothing observed')}"
    if not met:
        if not observation.condition:
            return False, "suppressed", "condition not met"
        return False, "suppressed", (f"debounce: held in {held} of the last {len(window)} evaluations, "
                                     f"{spec.debounce.m} of {spec.debounce.n} needed")
    if not past.rearmed:
        return True, "suppressed", "fired already for this condition; waiting for it to clear"
    if past.last_fired_at is not None and now - past.last_fired_at < spec.cooldown_s:
        until = datetime.fromtimestamp(past.last_fired_at + spec.cooldown_s, timezone.utc).isoformat()
        return True, "suppressed", f"cooldown until {until}"
    return True, "fired", f"held in {held} of the last {len(window)} evaluations"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _epoch(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


class RetrainingTriggers:
    def __init__(self, config: RetrainingConfig, db, drift_of: Callable[[str], dict | None] | None = None,
                 clock: Callable[[], float] = time.time, feedback_min_tenants: int = 1):
        self.config = config
        # triggers are global: feedback moves them only once this many tenants sent it (feedback.py)
        self.feedback_min_tenants = feedback_min_tenants
        self.db = db
        self.drift_of = drift_of or (lambda deployment: None)
        self.clock = clock
        self._loop: asyncio.Task | None = None
        self._actions: set[asyncio.Task] = set()
        self._started_at = clock()

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.config.triggers:
            self._loop = asyncio.create_task(every(self.config.interval_s, self.evaluate_all,
                                                   "evaluating retraining triggers", log))

    async def stop(self) -> None:
        await cancel_and_wait(self._loop)
        if self._actions:  # an action under way finishes (its outcome is audited), within reason
            await asyncio.wait(self._actions, timeout=10)
        for task in self._actions:
            task.cancel()

    async def evaluate_all(self) -> None:
        for spec in self.config.triggers:
            try:
                await self.evaluate(spec)
            except Exception:
                log.exception("retraining trigger %s not evaluated", spec.name)

    # ---------------------------------------------------------------- one evaluation
    async def evaluate(self, spec: TriggerSpec) -> TriggerEvaluation | None:
        """Evaluate now; None when another process evaluated this slot already."""
        now = self.clock()
        slot = int(now // self.config.interval_s)
        past = await self._past(spec)
        observation = await self._observe(spec, now, past)
        met, outcome, reason = decide(spec, observation, past, now)
        row = TriggerEvaluation(trigger=spec.name, slot=slot, kind="evaluation", condition=observation.condition,
                                met=met, observed=observation.observed, outcome=outcome, reason=reason,
                                detail={"kind": spec.kind, "threshold": observation.threshold,
                                        **observation.detail}, created_at=_utc(now))
        if not await self._append(row):
            return None
        log.log(logging.WARNING if outcome == "fired" else logging.DEBUG, "retraining trigger %s %s: %s",
                spec.name, outcome, reason)
        if outcome == "fired":
            task = asyncio.create_task(self._act(spec, row, observation, past))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)
        return row

    async def _append(self, row: TriggerEvaluation) -> bool:
        async with self.db.session() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                return False
        return True

    async def _past(self, spec: TriggerSpec) -> Past:
        evaluations = select(TriggerEvaluation).where(TriggerEvaluation.trigger == spec.name,
                                                      TriggerEvaluation.kind == "evaluation")
        async with self.db.session() as session:
            recent = (await session.execute(evaluations.order_by(TriggerEvaluation.id.desc())
                                            .limit(spec.debounce.n - 1))).scalars().all() if spec.debounce.n > 1 else []
            fired = (await session.execute(evaluations.where(TriggerEvaluation.outcome == "fired")
                                           .order_by(TriggerEvaluation.id.desc()).limit(1))).scalars().first()
            rearmed = True
            if fired is not None:
                cleared = await session.execute(select(func.count()).select_from(TriggerEvaluation).where(
                    TriggerEvaluation.trigger == spec.name, TriggerEvaluation.kind == "evaluation",
                    TriggerEvaluation.id > fired.id, TriggerEvaluation.met.is_not(True)))
                rearmed = cleared.scalar_one() > 0
            first = (await session.execute(select(func.min(TriggerEvaluation.created_at)).where(
                TriggerEvaluation.trigger == spec.name))).scalar_one()
        return Past([r.condition for r in recent], _epoch(fired.created_at) if fired else None, rearmed,
                    _epoch(first) if first is not None else None)

    # ---------------------------------------------------------------- observing the condition
    async def _observe(self, spec: TriggerSpec, now: float, past: Past) -> Observation:
        if spec.schedule is not None:
            return self._schedule(spec, now, past)
        if spec.metric is not None:
            return await self._metric(spec, now)
        if spec.drift is not None:
            report = self.drift_of(spec.drift.deployment)
            if report is None:
                return Observation(None, None, spec.drift.above, {"why": "no drift report yet"})
            share = float(report.get("drift_share", 0.0))
            return Observation(share > spec.drift.above, share, spec.drift.above,
                               {"deployment": spec.drift.deployment,
                                "drift_detected": bool(report.get("drift_detected"))})
        return await self._feedback_count(spec, past)

    def _schedule(self, spec: TriggerSpec, now: float, past: Past) -> Observation:
        """Due when a scheduled time has come since the last firing (or since it was first evaluated)."""
        from croniter import croniter

        base = past.last_fired_at or past.first_seen or self._started_at
        due = croniter(spec.schedule.cron, _utc(base)).get_next(float)
        return Observation(due <= now, due, None, {"cron": spec.schedule.cron, "due_at": _utc(due).isoformat()})

    async def _metric(self, spec: TriggerSpec, now: float) -> Observation:
        condition = spec.metric
        value = case((Score.kind == "numeric", Score.numeric), (Score.kind == "boolean",
                                                                case((Score.boolean.is_(True), 1.0), else_=0.0)))
        query = select(func.avg(value), func.count(), func.count(Score.tenant_id.distinct())).where(
            Score.name == condition.score, Score.kind != "categorical",
            Score.created_at >= _utc(now - condition.window_s))
        if condition.deployment:
            query = query.where(Score.deployment == condition.deployment)
        async with self.db.session() as session:
            mean, count, tenants = (await session.execute(query)).one()
        threshold = condition.below if condition.below is not None else condition.above
        detail = {"score": condition.score, "samples": count, "window_s": condition.window_s,
                  "deployment": condition.deployment, "direction": "below" if condition.below is not None else "above"}
        if is_feedback(condition.score) and tenants < self.feedback_min_tenants:
            return Observation(None, None if mean is None else float(mean), threshold,
                               {**detail, "why": self._too_few_tenants(tenants)})
        if count < condition.min_samples:
            return Observation(None, None if mean is None else float(mean), threshold,
                               {**detail, "why": f"{count} scores in the window, {condition.min_samples} needed"})
        mean = float(mean)
        held = mean < condition.below if condition.below is not None else mean > condition.above
        return Observation(held, mean, threshold, detail)

    async def _feedback_count(self, spec: TriggerSpec, past: Past) -> Observation:
        condition = spec.feedback_count
        query = select(func.count(), func.count(Score.tenant_id.distinct())).where(Score.source == "feedback")
        query = query.where(Score.name == f"feedback.{condition.metric}" if condition.metric
                            else Score.name.like("feedback.%"))
        if condition.deployment:
            query = query.where(Score.deployment == condition.deployment)
        if past.last_fired_at is not None:
            query = query.where(Score.created_at > _utc(past.last_fired_at))
        async with self.db.session() as session:
            count, tenants = (await session.execute(query)).one()
        since = _utc(past.last_fired_at).isoformat() if past.last_fired_at else None
        if count and tenants < self.feedback_min_tenants:
            return Observation(False, float(count), float(condition.at_least),
                               {"since": since, "why": self._too_few_tenants(tenants)})
        return Observation(count >= condition.at_least, float(count), float(condition.at_least), {"since": since})

    def _too_few_tenants(self, tenants: int) -> str:
        return (f"feedback from {tenants} tenant(s); a global trigger needs {self.feedback_min_tenants} "
                "(feedback.min_tenants)")

    # ---------------------------------------------------------------- acting
    def payload(self, spec: TriggerSpec, row: TriggerEvaluation, observation: Observation, past: Past) -> dict:
        since = _utc(past.last_fired_at).isoformat() if past.last_fired_at else \
            (row.created_at - timedelta(seconds=spec.metric.window_s if spec.metric else 0)).isoformat()
        return {"trigger": spec.name, "kind": spec.kind, "evaluation_id": row.id,
                "idempotency_key": idempotency_key(spec.name, row.slot), "fired_at": row.created_at.isoformat(),
                "observed": observation.observed, "threshold": observation.threshold, "reason": row.reason,
                "condition": spec.model_dump(mode="json", include={spec.kind})[spec.kind], "detail": observation.detail,
                "data": data_links(spec, since, self.config.external_url)}

    async def _act(self, spec: TriggerSpec, row: TriggerEvaluation, observation: Observation, past: Past) -> None:
        payload = self.payload(spec, row, observation, past)
        key = payload["idempotency_key"]
        try:
            if spec.action.webhook is not None:
                result = await send_webhook(spec.action.webhook, payload, key, spec.name)
            else:
                result = await run_command(spec.action.command, payload, key)
        except Exception as exc:
            log.exception("retraining trigger %s: action failed", spec.name)
            result = {"ok": False, "error": type(exc).__name__}
        outcome = "delivered" if result["ok"] else "failed"
        log.log(logging.INFO if result["ok"] else logging.ERROR, "retraining trigger %s: action %s %s",
                spec.name, outcome, {k: v for k, v in result.items() if k != "output"})
        await self._append(TriggerEvaluation(
            trigger=spec.name, slot=row.slot, kind="action", condition=None, met=None, observed=observation.observed,
            outcome=outcome, reason="webhook" if spec.action.webhook else "command",
            detail={"idempotency_key": key, "evaluation_id": row.id, **result}, created_at=_utc(self.clock())))

    # ---------------------------------------------------------------- reading the audit
    async def history(self, name: str, limit: int = 100, before: int | None = None) -> list[dict]:
        query = select(TriggerEvaluation).where(TriggerEvaluation.trigger == name)
        if before is not None:
            query = query.where(TriggerEvaluation.id < before)
        async with self.db.session() as session:
            rows = (await session.execute(query.order_by(TriggerEvaluation.id.desc()).limit(limit))).scalars().all()
        return [{"id": r.id, "trigger": r.trigger, "slot": r.slot, "kind": r.kind, "condition": r.condition,
                 "met": r.met, "observed": r.observed, "outcome": r.outcome, "reason": r.reason, "detail": r.detail,
                 "created_at": r.created_at.isoformat()} for r in rows]
