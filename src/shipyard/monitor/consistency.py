"""Self-consistency (SelfCheckGPT's idea): for a sample of answers, the same prompt is generated K
more times at a sampling temperature, and the answer is compared with each sample — unigram
overlap (token F1) and MiniLM cosine similarity. An answer the model does not reproduce is more
likely made up. The scores, `consistency_unigram` and `consistency_cosine`, are also the
"response consistency over time" series.

The extra generations go straight to the deployment's engine (past the caches, so a cached copy
is never compared with itself), in the background, at most `max_concurrent` at a time: a check
that finds no free slot is skipped, never queued behind traffic. Admins may ask for a check on
one request with the header `x-shipyard-evaluate: consistency` (the eval CLI does).
"""

from __future__ import annotations

import asyncio
import logging
import random

import numpy as np

from shipyard.embeddings import Embedder, shared_embedder
from shipyard.engines.base import GenerationRequest
from shipyard.engines.side_requests import run_side, side_request
from shipyard.evaluation.metrics import token_f1
from shipyard.monitor.scores import ScoreWriter
from shipyard.monitor.settings import ConsistencyConfig

log = logging.getLogger("shipyard.monitor")


def consistency_scores(answer: str, samples: list[str], embed) -> dict[str, float]:
    """Mean unigram F1 and mean cosine similarity of the answer against each sample."""
    vectors = np.asarray(embed([answer, *samples]), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return {"consistency_unigram": float(np.mean([token_f1(answer, s) for s in samples])),
            "consistency_cosine": float(np.mean(vectors[1:] @ vectors[0]))}


class ConsistencyMonitor:
    def __init__(self, settings: ConsistencyConfig, engines, writer: ScoreWriter, embedder_factory=None):
        self.settings = settings
        self.engines = engines  # () -> {deployment: the raw engine}
        self.writer = writer
        self.embedder_factory = embedder_factory
        self._tasks: set[asyncio.Task] = set()
        self.skipped = 0

    def watches(self, deployment: str) -> bool:
        return deployment in self.settings.deployments

    def __call__(self, finished) -> None:
        forced = finished.evaluate == "consistency"
        if finished.status != 200 or finished.cache in ("hit", "semantic") or finished.engine_request is None:
            return
        if not forced and not (self.watches(finished.deployment) and random.random() < self.settings.sample):
            return
        if not finished.output:
            return
        if len(self._tasks) >= self.settings.max_concurrent:
            self.skipped += 1
            return
        task = asyncio.create_task(self._check(finished))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sample(self, engine, request: GenerationRequest) -> str:
        """The prompt again, on the same engine (so its token ids stand), near-greedy."""
        extra = side_request(request.prompt, request.params, request.scope, max_tokens=self.settings.max_tokens,
                             prompt_ids=request.prompt_ids, temperature=self.settings.temperature, seed=None)
        result = await run_side(engine, extra)
        if result.status != 200:
            raise RuntimeError(f"a consistency sample failed: {result.error}")
        return result.text

    async def _check(self, finished) -> None:
        engine = self.engines().get(finished.deployment)
        if engine is None:
            return
        try:
            samples = [await self._sample(engine, finished.engine_request) for _ in range(self.settings.k)]
            embed = await asyncio.to_thread(self._embedder)  # loaded once, off the loop
            if isinstance(embed, Embedder):  # on its own thread: never holding the default pool
                scores = await embed.run(consistency_scores, finished.output, samples, embed)
            else:
                scores = await asyncio.to_thread(consistency_scores, finished.output, samples, embed)
        except Exception as exc:  # a failed check is logged and skipped, never a user's error
            log.warning("consistency check of %s failed: %s", finished.request_id, exc)
            return
        self.writer.record(finished.request_id, finished.tenant_id, finished.deployment, scores)

    def _embedder(self):
        if self.embedder_factory is not None:
            return self.embedder_factory()
        return shared_embedder(self.settings.model_path)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
