"""Champion-challenger on a stored dataset: every input sent to both arms, the same way shadow copies
go (straight to each deployment's engine, the lowest priority, never retried, never billed).

A dataset row is `{"messages": [...]}` (OpenAI's fine-tuning format: a last assistant message is the
reference answer, not part of the prompt; the review queue exports exactly this), or
`{"prompt": "...", "ideal": "..."}`. Each input becomes two `shadow_records` rows (one per arm)
under the id `replay-<experiment>-<job>-<n>`, the pair's agreement (`shadow.*` scores), and, with a
reference, each answer's MiniLM cosine to it (`replay.reference_cosine`); the decision report
(experiments/report.py) reads them as paired evidence.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipyard.engines.base import ChatMessage, Prompt, SamplingParams
from shipyard.engines.side_requests import run_side, side_request
from shipyard.experiments.report import REPLAY_PREFIX
from shipyard.store.models import ShadowRecord

log = logging.getLogger("shipyard.experiments")
TENANT = "replay"  # the copies belong to no tenant: nobody is billed for them
MAX_ROWS = 10_000
MAX_RUNNING = 4  # jobs at once in one process
MAX_KEPT = 100  # jobs remembered for GET .../replays/{job}


class ReplayBusy(Exception):
    pass


class Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fine-tuning lines may carry name, weight, tool calls
    role: str = Field(pattern="^(system|developer|user|assistant)$")
    content: str = Field(max_length=100_000)


class DatasetRow(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: list[Turn] | None = Field(None, min_length=1, max_length=200)
    prompt: str | None = Field(None, min_length=1, max_length=100_000)
    ideal: str | None = Field(None, max_length=100_000, description="the reference answer")

    @model_validator(mode="after")
    def _one(self) -> DatasetRow:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give one of messages and prompt")
        if self.messages is not None and self.messages[-1].role == "assistant":
            if len(self.messages) == 1:
                raise ValueError("messages hold no prompt before the assistant's answer")
            self.ideal = self.ideal or self.messages[-1].content
            self.messages = self.messages[:-1]
        return self

    def as_prompt(self) -> Prompt:
        if self.messages is not None:
            return Prompt(messages=[ChatMessage(t.role, t.content) for t in self.messages])
        return Prompt(text=self.prompt)


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    dataset: list[DatasetRow] = Field(min_length=1, max_length=MAX_ROWS)
    max_tokens: int = Field(128, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0, le=2)
    concurrency: int = Field(2, ge=1, le=32, description="inputs in flight at once (each to both arms)")


@dataclass
class ReplayJob:
    id: str
    experiment: str
    total: int
    done: int = 0
    failed: int = 0  # inputs where an arm failed
    status: str = "running"  # running | done | cancelled
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def view(self) -> dict:
        return {"object": "experiment.replay", "id": self.id, "experiment": self.experiment, "total": self.total,
                "done": self.done, "failed": self.failed, "status": self.status,
                "started_at": datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(),
                "finished_at": datetime.fromtimestamp(self.finished_at, timezone.utc).isoformat()
                if self.finished_at else None}


class Replayer:
    def __init__(self, engines, writer, db, cost_of, comparer):
        self.engines = engines  # () -> {deployment: its own engine}
        self.writer = writer
        self.db = db
        self.cost_of = cost_of
        self.comparer = comparer  # experiments.comparison.PairComparer
        self.jobs: dict[str, ReplayJob] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def start(self, spec, body: ReplayIn) -> ReplayJob:
        """A new job, or ReplayBusy when MAX_RUNNING run here already."""
        if len(self._tasks) >= MAX_RUNNING:
            raise ReplayBusy(f"{len(self._tasks)} replays are running in this process; wait for one to end.")
        job = ReplayJob(secrets.token_hex(6), spec.name, len(body.dataset))
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_KEPT:  # the oldest ended jobs are forgotten
            oldest = next(j for j in self.jobs.values() if j.status != "running")
            del self.jobs[oldest.id]
        self._tasks[job.id] = asyncio.create_task(self._run(job, spec, body))
        return job

    async def _run(self, job: ReplayJob, spec, body: ReplayIn) -> None:
        gate = asyncio.Semaphore(body.concurrency)
        params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature)

        async def one(index: int, row: DatasetRow) -> None:
            async with gate:
                try:
                    await self._replay(f"{REPLAY_PREFIX}{spec.name}-{job.id}-{index}", spec, row, params, job)
                except Exception:
                    job.failed += 1
                    log.exception("replay %s: input %d failed", job.id, index)
                job.done += 1

        try:
            await asyncio.gather(*(one(i, row) for i, row in enumerate(body.dataset)))
            job.status = "done"
        except asyncio.CancelledError:
            job.status = "cancelled"
            raise
        finally:
            job.finished_at = time.time()
            self._tasks.pop(job.id, None)
            log.info("replay %s of %s: %s, %d of %d inputs (%d failed)", job.id, spec.name, job.status, job.done,
                     job.total, job.failed)

    async def _replay(self, request_id: str, spec, row: DatasetRow, params: SamplingParams, job: ReplayJob) -> None:
        arms = spec.arms[:2]
        engines = self.engines()
        prompt = row.as_prompt()
        results = await asyncio.gather(*(run_side(engines.get(arm.deployment),
                                                  side_request(prompt, params, TENANT, f"{request_id}-{arm.name}"))
                                         for arm in arms))
        now = datetime.now(timezone.utc)
        records = [ShadowRecord(experiment=spec.name, arm=arm.name, deployment=arm.deployment, request_id=request_id,
                                tenant_id=TENANT, prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                                latency_ms=r.latency_s * 1000, ttft_ms=r.ttft_s * 1000 if r.ttft_s else None,
                                status=r.status,
                                cost_usd=self.cost_of(arm.deployment, r.prompt_tokens, r.completion_tokens, r.compute_s),
                                created_at=now) for arm, r in zip(arms, results)]
        async with self.db.session() as session:
            session.add_all(records)
            await session.commit()
        champion, challenger = results
        if champion.status != 200 or challenger.status != 200:
            job.failed += 1
            return
        scores = await self.comparer.compare(champion.text, challenger.text)
        self.writer.record(request_id, TENANT, arms[1].deployment, scores)
        if row.ideal:
            for arm, result in zip(arms, results):
                similarity = (await self.comparer.compare(row.ideal, result.text)).get("shadow.cosine")
                if similarity is not None:
                    self.writer.record(request_id, TENANT, arm.deployment, {"replay.reference_cosine": similarity})

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
