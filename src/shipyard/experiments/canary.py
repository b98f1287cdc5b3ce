"""Canary analysis: steps the canary's share up while it holds up against the champion, rolls it
back when it does not, and pauses for a human when the evidence does not come.

Every `interval_s`, for each running canary, the requests each arm served since the current step
began (their usage rows, from every process) are compared:

- error rate (5xx): mSPRT on the two binary streams; the canary fails when it is worse with
  always-valid significance, or when its rate is above the champion's by more than
  `max_error_rate_delta` once the minimum sample is in;
- P95 latency and P95 TTFT: the canary fails past `max_latency_ratio` × the champion's (and more
  than `latency_slack_ms` above it: a few milliseconds of jitter on a small sample is no signal);
- cost per request: past `max_cost_ratio` × the champion's;
- thumbs (feedback.thumbs): the canary fails when its up-rate is below the champion's by more
  than `max_thumbs_drop` (only with `min_feedback` votes on each side).

With the minimum sample on both arms and `step_min_s` at the step: all checks pass → the next
step (after the last, the canary is promoted); a failure → counted, and at `failure_limit` the
canary is rolled back (its weight 0, exactly once: a versioned transition). A step that has not
gathered the minimum sample after `inconclusive_after_s` is paused for a human. Every transition
is audited and sent to the alert webhooks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from sqlalchemy import and_, select

from shipyard.aio import cancel_and_wait, every
from shipyard.experiments.registry import ExperimentError
from shipyard.experiments.spec import CanarySettings
from shipyard.experiments.statistics import SequentialTest
from shipyard.store.models import Score, UsageRecord

log = logging.getLogger("shipyard.experiments")


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def analyse(settings: CanarySettings, champion: list[tuple], canary: list[tuple],
            thumbs: tuple[list[bool], list[bool]]) -> dict:
    """One step's verdict from each arm's (status, latency ms, ttft ms, cost) rows: pass, fail or
    wait (too few), with every check's figures."""
    checks: dict[str, dict] = {}
    if min(len(champion), len(canary)) < settings.min_requests:
        return {"verdict": "wait", "requests": [len(champion), len(canary)], "checks": checks}
    errors = SequentialTest("error_rate", higher_is_better=False, min_samples=settings.min_requests)
    for arm, rows in enumerate((champion, canary)):
        for status, *_ in rows:
            errors.observe(arm, 1.0 if status >= 500 else 0.0)
    result = errors.result()
    rates = result.means
    checks["error_rate"] = {"champion": rates[0], "canary": rates[1], "p_value": result.p_value,
                            "ok": result.decision != "challenger_worse" and
                            rates[1] - rates[0] <= settings.max_error_rate_delta}
    for name, column in (("latency_p95_ms", 1), ("ttft_p95_ms", 2)):
        ours = _p95([r[column] for r in canary if r[0] < 500 and r[column] is not None])
        theirs = _p95([r[column] for r in champion if r[0] < 500 and r[column] is not None])
        ok = ours is None or theirs is None or ours <= settings.max_latency_ratio * theirs or \
            ours - theirs <= settings.latency_slack_ms
        checks[name] = {"champion": theirs, "canary": ours, "ok": ok}
    cost = [sum(r[3] for r in rows) / len(rows) for rows in (champion, canary)]
    checks["cost_per_request"] = {"champion": cost[0], "canary": cost[1],
                                  "ok": cost[1] <= settings.max_cost_ratio * cost[0] or cost[1] <= 1e-9}
    ups, downs = thumbs
    if min(len(ups), len(downs)) >= settings.min_feedback:
        rate = [sum(v) / len(v) for v in (ups, downs)]
        checks["thumbs_up_rate"] = {"champion": rate[0], "canary": rate[1],
                                    "ok": rate[1] >= rate[0] - settings.max_thumbs_drop}
    verdict = "pass" if all(c["ok"] for c in checks.values()) else "fail"
    return {"verdict": verdict, "requests": [len(champion), len(canary)], "checks": checks}


class CanaryController:
    def __init__(self, registry, db, interval_s: float = 5.0, clock=time.time, feedback_min_tenants: int = 1):
        self.registry = registry
        # an experiment open to every tenant reads thumbs only once this many tenants voted (feedback.py)
        self.feedback_min_tenants = feedback_min_tenants
        self.db = db
        self.interval_s = interval_s
        self.clock = clock
        self.failures: dict[tuple[str, int], int] = {}  # (experiment, version at the step) → failed analyses
        self.last: dict[str, dict] = {}  # each canary's latest analysis, for the status route
        self._task: asyncio.Task | None = None

    async def start(self) -> None:  # a failed look moves nothing; the next one runs
        self._task = asyncio.create_task(every(self.interval_s, self.step, "canary analysis", log))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def step(self) -> None:
        for spec in list(self.registry.specs.values()):
            if spec.mode == "canary" and spec.status == "running":
                await self._look(spec)

    async def _look(self, spec) -> None:
        settings: CanarySettings = spec.canary
        since = await self._step_started(spec.name)
        champion, canary = await self._rows(spec, since)
        thumbs = await self._thumbs(spec, since)
        analysis = analyse(settings, champion, canary, thumbs)
        analysis["step"] = self._step_index(spec)
        analysis["since"] = since.isoformat()
        self.last[spec.name] = analysis
        elapsed = self.clock() - since.timestamp()
        version = self.registry.versions.get(spec.name, 0)
        if analysis["verdict"] == "wait":
            if elapsed >= settings.inconclusive_after_s:
                await self._move(spec, "pause", {"reason": "inconclusive: the minimum sample did not come",
                                                 **analysis}, lambda s: s.model_copy(update={"status": "paused"}))
            return
        if analysis["verdict"] == "fail":
            key = (spec.name, version)
            self.failures[key] = self.failures.get(key, 0) + 1
            if self.failures[key] >= settings.failure_limit:
                await self._move(spec, "rollback", {"reason": "the canary failed its analysis", **analysis},
                                 lambda s: s.model_copy(update={"status": "rolled_back"}))
            return
        if elapsed < settings.step_min_s:
            return
        index = analysis["step"]
        if index + 1 >= len(settings.steps) or settings.steps[index + 1] >= 1.0:  # all traffic: the promotion
            await self._move(spec, "promote", {"reason": "the canary passed every step", **analysis},
                             lambda s: s.model_copy(update={"status": "promoted", "promoted_arm": s.arms[1].name}))
            return
        share = settings.steps[index + 1]
        await self._move(spec, "step", {"reason": f"passed step {index + 1}: now {share:.0%}", "weight": share,
                                        **analysis}, lambda s: _with_share(s, share))

    async def _move(self, spec, kind: str, detail: dict, change) -> None:
        expected = spec.model_dump()

        def guarded(current):  # only from the state this analysis saw: a human or a racing process wins
            if current.model_dump() != expected:
                raise ExperimentError(409, "changed meanwhile", "conflict")
            return change(current)

        try:
            await self.registry.transition(spec.name, kind, "canary", guarded, detail)
            log.warning("canary %s: %s (%s)", spec.name, kind, detail.get("reason"))
        except ExperimentError:
            pass

    @staticmethod
    def _step_index(spec) -> int:
        share = spec.arms[1].weight
        steps = spec.canary.steps
        return min(range(len(steps)), key=lambda i: abs(steps[i] - share))

    async def _step_started(self, name: str) -> datetime:
        events = await self.registry.events(name)
        moves = [e for e in events if e["kind"] in ("created", "step", "resume")]
        return datetime.fromisoformat(moves[-1]["created_at"]) if moves else datetime.now(timezone.utc)

    async def _rows(self, spec, since: datetime) -> tuple[list, list]:
        variants = [f"{spec.name}/{arm.name}" for arm in spec.arms]
        query = (select(UsageRecord.variant, UsageRecord.status, UsageRecord.latency_ms, UsageRecord.ttft_ms,
                        UsageRecord.cost_usd)
                 .where(UsageRecord.variant.in_(variants), UsageRecord.created_at >= since))
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        arms: dict[str, list] = {v: [] for v in variants}
        for variant, *values in rows:
            arms[variant].append(tuple(values))
        return arms[variants[0]], arms[variants[1]]

    async def _thumbs(self, spec, since: datetime) -> tuple[list[bool], list[bool]]:
        variants = [f"{spec.name}/{arm.name}" for arm in spec.arms]
        query = (select(UsageRecord.variant, Score.boolean, Score.tenant_id)
                 .join(UsageRecord, and_(UsageRecord.request_id == Score.request_id))
                 .where(Score.name == "feedback.thumbs", UsageRecord.variant.in_(variants),
                        Score.created_at >= since, Score.boolean.is_not(None)))
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        votes: dict[str, list[bool]] = {v: [] for v in variants}
        if spec.tenant_id is None and len({tenant for _, _, tenant in rows}) < self.feedback_min_tenants:
            return [], []  # one tenant alone does not move a canary every tenant shares
        for variant, value, _ in rows:
            votes[variant].append(bool(value))
        return votes[variants[0]], votes[variants[1]]


def _with_share(spec, share: float):
    arms = [spec.arms[0], spec.arms[1].model_copy(update={"weight": share})]
    return spec.model_copy(update={"arms": arms})
