"""Drift and new patterns in a deployment's traffic, watched in the serving path.

An observer of finished requests (`DriftMonitor.__call__`) only queues what it needs — on the
request path that is one bounded append. A worker thread then describes each request
(monitor/descriptors.py), embeds its prompt and answer with MiniLM, and adds them to two windows
per deployment: the *reference* (the first `reference_size` requests, or whatever an operator
resets it to) and the *current* one (the latest `current_size`). No text is kept unless the
deployment opts in (`store_text`).

Each evaluation compares the windows twice, inputs and outputs, with Evidently's tests
(monitor/drift_stats.py): a side has drifted when the share of its drifted descriptors reaches
`drift_share_alert` or its embeddings are told apart by a domain classifier. New patterns: each
request's prompt embedding is checked against clusters of the reference's; the share of the
latest `recent` requests that fit no cluster is watched.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from shipyard.aio import cancel_and_wait
from shipyard.monitor.descriptors import describe
from shipyard.monitor.drift_stats import PatternModel, categorical_drift, embedding_drift, numeric_drift
from shipyard.monitor.settings import DriftConfig

log = logging.getLogger("shipyard.monitor")

EMBED_CHARS = 512
INPUT_FEATURES = {"prompt_tokens": "numeric", "prompt_non_ascii_share": "numeric", "prompt_symbol_share": "numeric",
                  "prompt_script": "categorical", "prompt_pii": "categorical"}
OUTPUT_FEATURES = {"output_tokens": "numeric", "mean_logprob": "numeric", "output_symbol_share": "numeric",
                   "finish_reason": "categorical", "refusal": "categorical", "output_pii": "categorical"}


@dataclass
class Observed:
    """What the request path hands over: the texts are dropped once described and embedded."""

    deployment: str
    prompt: str
    output: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None
    mean_logprob: float | None


@dataclass
class Window:
    rows: deque
    prompt_vectors: deque
    output_vectors: deque

    @classmethod
    def of(cls, rows: int, vectors: int) -> Window:
        return cls(deque(maxlen=rows), deque(maxlen=vectors), deque(maxlen=vectors))

    def add(self, row: dict, prompt_vector, output_vector) -> None:
        self.rows.append(row)
        if prompt_vector is not None:
            self.prompt_vectors.append(prompt_vector)
            self.output_vectors.append(output_vector)

    def column(self, name: str, kind: str) -> np.ndarray:
        values = [row[name] for row in self.rows]
        return np.asarray(values, dtype=float if kind == "numeric" else object)


@dataclass
class DeploymentDrift:
    settings: DriftConfig
    reference: Window = None
    current: Window = None
    patterns: PatternModel | None = None
    novel: deque = None  # recent requests: True when their prompt fits no reference cluster
    texts: deque | None = None
    frozen: bool = False  # the reference is full (or was set by an operator)
    seen: int = 0
    report: dict | None = None

    def __post_init__(self):
        s = self.settings
        vectors = min(s.embedding_rows, s.reference_size)
        self.reference = Window.of(s.reference_size, vectors)
        self.current = Window.of(s.current_size, min(s.embedding_rows, s.current_size))
        self.novel = deque(maxlen=s.recent)

    def add(self, row: dict, prompt_vector, output_vector, text: str | None) -> None:
        self.seen += 1
        if text is not None:
            self.texts.append(text)
        if not self.frozen:
            self.reference.add(row, prompt_vector, output_vector)
            if len(self.reference.rows) >= self.settings.reference_size:
                self.freeze()
            return
        self.current.add(row, prompt_vector, output_vector)
        if self.patterns is not None and prompt_vector is not None:
            self.novel.append(bool(self.patterns.novel(prompt_vector[None, :])[0]))

    def freeze(self) -> None:
        self.frozen = True
        if self.settings.embeddings and len(self.reference.prompt_vectors):
            self.patterns = PatternModel.fit(np.stack(self.reference.prompt_vectors),
                                             self.settings.new_pattern_clusters)

    def reset_reference(self) -> None:
        """The current window becomes the reference (after a change the operator accepts)."""
        self.reference, self.current = self.current, Window.of(self.settings.current_size,
                                                               min(self.settings.embedding_rows,
                                                                   self.settings.current_size))
        self.novel.clear()
        self.freeze()
        self.report = None

    def evaluate(self, seed: int = 0) -> dict | None:
        if not self.frozen or len(self.current.rows) < self.settings.min_current:
            return None
        sides = {}
        for side, features, vectors in (("input", INPUT_FEATURES, "prompt_vectors"),
                                        ("output", OUTPUT_FEATURES, "output_vectors")):
            results = []
            for name, kind in features.items():
                test = numeric_drift if kind == "numeric" else categorical_drift
                result = test(name, self.reference.column(name, kind), self.current.column(name, kind))
                if result is not None:
                    results.append(result)
            share = sum(r.drifted for r in results) / len(results) if results else 0.0
            embedding = None
            ref_vectors, cur_vectors = getattr(self.reference, vectors), getattr(self.current, vectors)
            if self.settings.embeddings and len(ref_vectors) and len(cur_vectors):
                embedding = embedding_drift(f"{side}_embedding", np.stack(ref_vectors), np.stack(cur_vectors), seed)
            sides[side] = {"features": [r.view() for r in results], "drift_share": share,
                           "embedding": embedding.view() if embedding else None,
                           "drifted": share >= self.settings.drift_share_alert or bool(embedding and embedding.drifted)}
        novel_share = sum(self.novel) / len(self.novel) if self.novel else 0.0
        return {"reference_rows": len(self.reference.rows), "current_rows": len(self.current.rows),
                "drift_detected": sides["input"]["drifted"] or sides["output"]["drifted"],
                "drift_share": max(sides["input"]["drift_share"], sides["output"]["drift_share"]),
                "input": sides["input"], "output": sides["output"],
                "new_patterns": {"share": novel_share, "recent": len(self.novel),
                                 "threshold": self.patterns.threshold if self.patterns else None,
                                 "alerting": len(self.novel) >= self.novel.maxlen // 2
                                 and novel_share >= self.settings.new_pattern_share_alert},
                "evaluated_at": time.time()}


@dataclass
class DriftMonitor:
    settings: DriftConfig
    embedder_factory: object = None  # () -> Embedder; default: the shared MiniLM
    _pending: deque = field(default_factory=lambda: deque(maxlen=10_000))
    _deployments: dict[str, DeploymentDrift] = field(default_factory=dict)
    _task: asyncio.Task | None = None
    dropped: int = 0
    last_evaluation: float = 0.0
    # The worker thread adds while an evaluation (another thread) or an admin reset reads.
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _draining: asyncio.Lock = field(default_factory=asyncio.Lock)

    def watches(self, deployment: str) -> bool:
        return deployment in self.settings.deployments

    def __call__(self, finished) -> None:
        """The request-path observer: one append (the oldest dropped, and counted, past the bound)."""
        if finished.status != 200 or finished.cache in ("hit", "semantic") or not self.watches(finished.deployment):
            return
        if self.settings.sample < 1.0 and random.random() >= self.settings.sample:
            return
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        mean = (sum(c["mean_logprob"] * c["tokens"] for c in finished.confidence)
                / max(1, sum(c["tokens"] for c in finished.confidence))) if finished.confidence else None
        self._pending.append(Observed(finished.deployment, finished.prompt or "", finished.output or "",
                                      finished.usage.prompt_tokens, finished.usage.completion_tokens,
                                      finished.finish_reason, mean))

    def of(self, deployment: str) -> DeploymentDrift:
        state = self._deployments.get(deployment)
        if state is None:
            state = self._deployments[deployment] = DeploymentDrift(self.settings)
            if deployment in self.settings.store_text:
                state.texts = deque(maxlen=self.settings.current_size)
        return state

    def ingest(self, batch: list[Observed]) -> None:
        """Describe and embed a batch (in a worker thread), then add each to its deployment's windows."""
        rows = [describe(o.prompt, o.output, o.prompt_tokens, o.output_tokens, o.finish_reason, o.mean_logprob)
                for o in batch]
        prompts = outputs = [None] * len(batch)
        if self.settings.embeddings:
            embedder = self._embedder()
            # The first ~128 tokens say what a text is about; embedding cost grows with length.
            vectors = embedder([o.prompt[:EMBED_CHARS] for o in batch] + [o.output[:EMBED_CHARS] for o in batch])
            prompts, outputs = vectors[: len(batch)], vectors[len(batch):]
        with self._lock:
            for observed, row, p, o in zip(batch, rows, prompts, outputs):
                state = self.of(observed.deployment)
                state.add(row, p, o, observed.prompt if state.texts is not None else None)

    def _embedder(self):
        if self.embedder_factory is not None:
            return self.embedder_factory()
        from shipyard.embeddings import shared_embedder

        return shared_embedder(self.settings.model_path)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self.drain()

    async def drain(self) -> None:
        """Ingest everything queued so far; one drain at a time, so that after it returns nothing
        handed over before the call is still in flight."""
        async with self._draining:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(64, len(self._pending)))]
                try:
                    await asyncio.to_thread(self.ingest, batch)
                except Exception:  # a failed batch is lost, never an error on the request path
                    log.exception("drift: describing a batch failed")

    async def evaluate(self, force: bool = False) -> dict[str, dict]:
        """Compare every watched deployment's windows (off the event loop), at most every
        `evaluation_interval_s` unless forced."""
        now = time.monotonic()
        if not force and now - self.last_evaluation < self.settings.evaluation_interval_s:
            return self.reports()
        self.last_evaluation = now
        for state in list(self._deployments.values()):
            state.report = await asyncio.to_thread(self._locked, state.evaluate)
        return self.reports()

    def _locked(self, work):
        with self._lock:
            return work()

    async def reset_reference(self, deployment: str) -> bool:
        state = self._deployments.get(deployment)
        if state is None:
            return False
        await asyncio.to_thread(self._locked, state.reset_reference)
        return True

    def reports(self) -> dict[str, dict]:
        return {name: state.report for name, state in self._deployments.items() if state.report is not None}

    def status(self, deployment: str) -> dict:
        state = self._deployments.get(deployment)
        if state is None:
            return {"deployment": deployment, "reference_rows": 0, "current_rows": 0, "report": None}
        return {"deployment": deployment, "reference_rows": len(state.reference.rows),
                "current_rows": len(state.current.rows), "reference_frozen": state.frozen, "seen": state.seen,
                "report": state.report,
                "recent_prompts": list(state.texts)[-20:] if state.texts is not None else None}
