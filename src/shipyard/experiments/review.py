"""The human review queue: responses worth a human's look, queued by rules, claimed and labelled.

Rules that fill it:
- a random `sample` of answered requests;
- a thumbs-down (`feedback.thumbs` false);
- a low hallucination score (`faithfulness`, `consistency_cosine`, below their thresholds);
- shadow disagreement (`shadow.cosine` below a threshold: the challenger answered otherwise);
- any other score rule an operator adds.

Only queued responses keep their text. Each server process holds the prompt and answer of its
recent responses (bounded in count and age) for the deployments under review; the random sample is
queued when the answer ends, and the score rules are checked by scanning new scores every few
seconds: the process that holds the response queues it (one item per response: unique in the
table), so feedback arriving at another process still queues it.

Labels become annotation scores (`review.<label>`, source annotation) of the response, next to
the monitors' and users'. Labelled items export as OpenAI's fine-tuning JSONL: the prompt's
messages and, as the assistant's turn, the reviewer's correction or an answer judged good.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from shipyard.aio import cancel_and_wait, every
from shipyard.monitor.scores import NAME_PATTERN
from shipyard.store.models import ReviewItem, Score

log = logging.getLogger("shipyard.review")
SCAN_BATCH = 1000
LOOKBACK_IDS = 500
MAX_WRITES_IN_FLIGHT = 100  # scores committed out of id order (concurrent writers) are still seen


class ScoreRule(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    score: str = Field(pattern=NAME_PATTERN)
    below: float | None = None
    above: float | None = None
    equals: bool | str | None = Field(None, description="a boolean or categorical score's value")

    @model_validator(mode="after")
    def _one(self) -> ScoreRule:
        if sum(v is not None for v in (self.below, self.above, self.equals)) != 1:
            raise ValueError("give one of below, above and equals")
        return self

    def matches(self, row: Score) -> bool:
        if self.equals is not None:
            value = row.boolean if row.kind == "boolean" else row.label
            return value == self.equals
        if row.kind == "numeric" and row.numeric is not None:
            return row.numeric < self.below if self.below is not None else row.numeric > self.above
        return False


class ReviewConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    enabled: bool = Field(False, description="keep the text of queued responses (only those) for reviewers")
    deployments: list[str] | None = Field(None, description="the deployments under review (default: all)")
    sample: float = Field(0.01, ge=0, le=1, description="share of answered requests queued at random")
    thumbs_down: bool = True
    hallucination: list[ScoreRule] = Field(
        default_factory=lambda: [ScoreRule(score="faithfulness", below=0.5),
                                 ScoreRule(score="consistency_cosine", below=0.7)])
    shadow_cosine_below: float | None = Field(0.8, ge=-1, le=1, description="shadow disagreement (None: off)")
    rules: list[ScoreRule] = Field(default_factory=list, description="more score rules")
    hold_s: float = Field(3600.0, gt=0, description="how long a response's text waits for a score to queue it")
    max_held: int = Field(10_000, ge=1, description="responses held per process for the score rules")
    max_held_chars: int = Field(32_000_000, ge=1, description="and at most this much of their text in all")
    claim_ttl_s: float = Field(1800.0, gt=0, description="a claim not labelled within this lapses")
    scan_interval_s: float = Field(2.0, gt=0)

    def score_rules(self) -> list[tuple[str, ScoreRule]]:
        """(reason, rule), in the order they are checked."""
        rules = [("thumbs_down", ScoreRule(score="feedback.thumbs", equals=False))] if self.thumbs_down else []
        rules += [(f"hallucination:{r.score}", r) for r in self.hallucination]
        if self.shadow_cosine_below is not None:
            rules.append(("shadow_disagreement", ScoreRule(score="shadow.cosine", below=self.shadow_cosine_below)))
        return rules + [(f"rule:{r.score}", r) for r in self.rules]


def _chars(fields: dict) -> int:
    return len(fields["answer"]) + sum(len(m["content"]) for m in fields["messages"])


def prompt_messages(prompt) -> list[dict] | None:
    """The prompt as chat messages (a completion's text becomes the user's turn); None for token ids."""
    if prompt.messages is not None:
        return [{"role": m.role, "content": m.content} for m in prompt.messages]
    if prompt.text is not None:
        return [{"role": "user", "content": prompt.text}]
    return None


class ReviewQueue:
    """Fills the queue: an observer of the request path, and a scanner of new scores."""

    def __init__(self, config: ReviewConfig, db, clock=time.monotonic):
        self.config = config
        self.db = db
        self.clock = clock
        self._held: OrderedDict[str, tuple[float, dict]] = OrderedDict()  # usage id → (when, item fields)
        self._held_chars = 0
        self._watermark: int | None = None
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._scanner: asyncio.Task | None = None
        self._rules = config.score_rules()
        self.queued = 0

    def watches(self, deployment: str) -> bool:
        return self.config.enabled and (self.config.deployments is None or deployment in self.config.deployments)

    # ---------------------------------------------------------------- the observer
    def __call__(self, finished) -> None:
        if finished.status != 200 or finished.output is None or not self.watches(finished.deployment) or \
                finished.engine_request is None:
            return
        messages = prompt_messages(finished.engine_request.prompt)
        if messages is None:
            return
        fields = {"request_id": finished.request_id, "response_id": finished.response_id,
                  "tenant_id": finished.tenant_id, "deployment": finished.deployment, "messages": messages,
                  "answer": finished.output}
        if random.random() < self.config.sample:
            if len(self._tasks) < MAX_WRITES_IN_FLIGHT:  # a frozen store: samples are dropped, not piled up
                self._spawn(self._queue(fields, "sample"))
            return
        if self._rules:
            self._forget(finished.request_id)  # a reused id: the latest answer counts
            self._held[finished.request_id] = (self.clock(), fields)
            self._held_chars += _chars(fields)
            while self._held and (len(self._held) > self.config.max_held or
                                  self._held_chars > self.config.max_held_chars):
                self._forget(next(iter(self._held)))

    def _forget(self, request_id: str) -> dict | None:
        held = self._held.pop(request_id, None)
        if held is None:
            return None
        self._held_chars -= _chars(held[1])
        return held[1]

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _queue(self, fields: dict, reason: str) -> bool:
        now = datetime.now(timezone.utc)
        try:
            async with self.db.session() as session:
                session.add(ReviewItem(**fields, reason=reason, status="pending", version=1, created_at=now))
                await session.commit()
        except IntegrityError:
            return False  # queued already (another rule, another process)
        except Exception as exc:  # the store is away: this one is not reviewed, the request is unaffected
            log.warning("review item for %s not queued: %s", fields["request_id"], exc)
            return False
        self.queued += 1
        return True

    # ---------------------------------------------------------------- the scanner
    async def start(self) -> None:
        if not self.config.enabled or not self._rules:
            return
        async with self.db.session() as session:
            self._watermark = (await session.execute(select(func.max(Score.id)))).scalar_one() or 0
        self._scanner = asyncio.create_task(every(self.config.scan_interval_s, self.scan, "scanning for review", log))

    async def stop(self) -> None:
        await cancel_and_wait(self._scanner)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def scan(self) -> None:
        self._expire()
        if not self._held:  # nothing to queue: just move past what is there
            async with self.db.session() as session:
                self._watermark = (await session.execute(select(func.max(Score.id)))).scalar_one() or 0
            return
        names = {rule.score for _, rule in self._rules}
        query = (select(Score).where(Score.id > max(0, (self._watermark or 0) - LOOKBACK_IDS), Score.name.in_(names))
                 .order_by(Score.id).limit(SCAN_BATCH))
        async with self.db.session() as session:
            rows = (await session.execute(query)).scalars().all()
        for row in rows:
            self._watermark = max(self._watermark or 0, row.id)
            if row.id in self._seen:
                continue
            self._seen[row.id] = None
            if row.request_id not in self._held:
                continue
            for reason, rule in self._rules:
                if rule.score == row.name and rule.matches(row):
                    if await self._queue(self._forget(row.request_id), reason):
                        log.info("review: %s queued (%s)", row.request_id, reason)
                    break
        while len(self._seen) > 4 * SCAN_BATCH:
            self._seen.popitem(last=False)

    def _expire(self) -> None:
        oldest = self.clock() - self.config.hold_s
        while self._held:
            key, (at, _) = next(iter(self._held.items()))
            if at >= oldest:
                break
            self._forget(key)
