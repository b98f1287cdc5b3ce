"""Shadow copies: the challenger processes real requests unseen.

An observer of the request path. When a request the experiment sampled for mirroring has been
answered (so the user's answer and latency never wait on it), a copy goes straight to the
challenger deployment's own engine (past the caches and the gateway: no tenant is billed or
limited for it), at the lowest priority, fire-and-forget, never retried:

- at most `shadow.max_concurrent` copies in flight; past that a copy is shed (counted);
- a failure or a timeout is counted and logged, never shown to anyone;
- each copy is a row of `shadow_records` (tokens, latency, TTFT, status, cost), never a usage row,
  written in batches every `flush_s`;
- when the day's (UTC) copies pass `daily_tokens` or `daily_cost_usd`, copies stop for the rest of
  the day: the experiment's `shadow_capped_day` is set by one audited transition saying why;
- each answered pair is compared — exact match, length ratio, MiniLM cosine (embedded in batches
  on a low-priority thread: experiments/comparison.py), TTFT and latency deltas — and the
  comparison stored as `shadow.*` scores of the primary request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from datetime import datetime, timezone

from sqlalchemy import func, select

from shipyard.aio import cancel_and_wait, every
from shipyard.experiments.comparison import PairComparer
from shipyard.engines.side_requests import run_side, side_request
from shipyard.experiments.registry import ExperimentError, utc_today
from shipyard.store.models import ShadowRecord

log = logging.getLogger("shipyard.experiments")
OUTCOMES = ("sent", "ok", "failed", "shed", "capped")
MAX_BUFFERED = 1000


class ShadowRunner:
    def __init__(self, engines, registry, writer, db, cost_of, embedder_factory=None, refresh_s: float = 5.0,
                 flush_s: float = 0.5):
        self.engines = engines  # () -> {deployment: its own engine, not the cache front}
        self.registry = registry
        self.writer = writer  # monitor.scores.ScoreWriter
        self.db = db
        self.cost_of = cost_of  # (deployment, prompt tokens, completion tokens, compute s) -> USD
        self.comparer = PairComparer(embedder_factory)
        self.refresh_s = refresh_s
        self.flush_s = flush_s
        self._rows: list[ShadowRecord] = []
        self._flusher: asyncio.Task | None = None
        self._writing = asyncio.Lock()
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self._stored: dict[str, tuple[int, float]] = {}  # today's spend per experiment, as the store had it
        self._since: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # added here since that read
        self._tasks: set[asyncio.Task] = set()
        self._capping: set[str] = set()
        self._refresher: asyncio.Task | None = None

    # ---------------------------------------------------------------- the observer
    def __call__(self, finished) -> None:
        if finished.mirror is None or finished.status != 200 or finished.engine_request is None:
            return
        name = finished.variant.split("/", 1)[0]
        spec = self.registry.specs.get(name)
        if spec is None or finished.output is None:
            return
        counts = self.counts[name]
        if self._over_cap(name, spec):
            counts["capped"] += 1
            return
        if sum(1 for t in self._tasks if t.get_name() == name) >= spec.shadow.max_concurrent:
            counts["shed"] += 1  # the lowest priority: shed first
            return
        counts["sent"] += 1
        task = asyncio.create_task(self._mirror(finished, spec), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spent(self, name: str) -> tuple[int, float]:
        tokens, cost = self._stored.get(name, (0, 0.0))
        extra = self._since[name]
        return tokens + int(extra[0]), cost + extra[1]

    def _over_cap(self, name: str, spec) -> bool:
        if spec.shadow_capped_day == utc_today():
            return True
        tokens, cost = self._spent(name)
        cap = spec.shadow
        reason = None
        if cap.daily_tokens is not None and tokens >= cap.daily_tokens:
            reason = f"{tokens} shadow tokens today, the cap is {cap.daily_tokens}"
        elif cap.daily_cost_usd is not None and cost >= cap.daily_cost_usd:
            reason = f"${cost:.4f} of shadow copies today, the cap is ${cap.daily_cost_usd:g}"
        if reason is None:
            return False
        if name not in self._capping:
            self._capping.add(name)
            task = asyncio.create_task(self._cap(name, reason, tokens, cost))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    async def _cap(self, name: str, reason: str, tokens: int, cost: float) -> None:
        day = utc_today()

        def change(spec):
            if spec.shadow_capped_day == day:
                raise ExperimentError(409, "capped already", "conflict")
            return spec.model_copy(update={"shadow_capped_day": day})

        try:
            await self.registry.transition(name, "shadow_capped", "shadow", change,
                                           {"reason": reason, "tokens": tokens, "cost_usd": round(cost, 6), "day": day})
            log.warning("experiment %s: shadow copies stopped for %s: %s", name, day, reason)
        except ExperimentError:  # another process capped it first
            pass
        finally:
            self._capping.discard(name)

    # ---------------------------------------------------------------- one copy
    async def _mirror(self, finished, spec) -> None:
        name, counts = spec.name, self.counts[spec.name]
        original = finished.engine_request
        copy = side_request(original.prompt, original.params, original.scope, f"shadow-{original.request_id}",
                            spec.shadow.max_tokens)
        result = await run_side(self.engines().get(finished.mirror), copy)
        if result.status != 200:  # counted, never shown to a user
            counts["failed"] += 1
            log.info("experiment %s: shadow copy of %s failed: %s", name, finished.request_id, result.error)
        cost = self.cost_of(finished.mirror, result.prompt_tokens, result.completion_tokens, result.compute_s)
        spent = self._since[name]
        spent[0] += result.prompt_tokens + result.completion_tokens
        spent[1] += cost
        await self._store(ShadowRecord(
            experiment=name, arm=finished.mirror_arm or "", deployment=finished.mirror,
            request_id=finished.request_id, tenant_id=finished.tenant_id, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, latency_ms=result.latency_s * 1000,
            ttft_ms=result.ttft_s * 1000 if result.ttft_s else None, status=result.status, cost_usd=cost,
            created_at=datetime.now(timezone.utc)))
        if result.status != 200:
            return
        counts["ok"] += 1
        scores = await self.comparer.compare(finished.output, result.text, spec.shadow.compare_sample)
        scores["shadow.latency_delta_ms"] = result.latency_s * 1000 - (finished.latency_ms or 0.0)
        if result.ttft_s is not None and finished.ttft_ms is not None:
            scores["shadow.ttft_delta_ms"] = result.ttft_s * 1000 - finished.ttft_ms
        self.writer.record(finished.request_id, finished.tenant_id, finished.mirror, scores)

    async def _store(self, row: ShadowRecord) -> None:
        """Buffered: written with the others every `flush_s` (one commit, not one per copy)."""
        self._rows.append(row)
        if len(self._rows) >= MAX_BUFFERED:
            await self.flush()

    async def flush(self) -> None:
        async with self._writing:  # never while the spend is read (a row would count twice or not at all)
            rows, self._rows = self._rows, []
            if not rows:
                return
            try:
                async with self.db.session() as session:
                    session.add_all(rows)
                    await session.commit()
            except Exception as exc:  # the store is away: the copies are counted here, not kept
                log.warning("%d shadow records not stored: %s", len(rows), exc)

    # ---------------------------------------------------------------- today's spend, from the store
    async def start(self) -> None:  # the store away: copies are counted here meanwhile
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("shadow spend not read: %s", exc)
        self._refresher = asyncio.create_task(every(self.refresh_s, self.refresh, "reading shadow spend", log))
        self._flusher = asyncio.create_task(every(self.flush_s, self.flush, "writing shadow records", log))

    async def refresh(self) -> None:
        """Today's tokens and cost per experiment from every process's records."""
        day = utc_today()
        midnight = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
        query = (select(ShadowRecord.experiment,
                        func.sum(ShadowRecord.prompt_tokens + ShadowRecord.completion_tokens),
                        func.sum(ShadowRecord.cost_usd))
                 .where(ShadowRecord.created_at >= midnight).group_by(ShadowRecord.experiment))
        async with self._writing:
            async with self.db.session() as session:
                rows = (await session.execute(query)).all()
            self._stored = {name: (int(tokens or 0), float(cost or 0.0)) for name, tokens, cost in rows}
            self._since.clear()
            for row in self._rows:  # copies not written yet still count
                spent = self._since[row.experiment]
                spent[0] += row.prompt_tokens + row.completion_tokens
                spent[1] += row.cost_usd

    async def stop(self) -> None:
        await cancel_and_wait(self._refresher)
        await cancel_and_wait(self._flusher)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()
        await self.comparer.stop()

    def families(self):
        """`shipyard:shadow_requests_total{experiment, outcome}`: sent, ok, failed, shed, capped; and
        `shipyard:shadow_comparisons_total{outcome}`: embedded, shed, failed."""
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("shipyard:shadow_requests", "Shadow copies by outcome",
                                     labels=["experiment", "outcome"])
        for name, counts in self.counts.items():
            for outcome in OUTCOMES:
                family.add_metric([name, outcome], counts[outcome])
        yield family
        compared = CounterMetricFamily("shipyard:shadow_comparisons", "Shadow pairs' embedding comparisons by outcome",
                                       labels=["outcome"])
        for outcome, count in self.comparer.counts.items():
            compared.add_metric([outcome], count)
        yield compared
