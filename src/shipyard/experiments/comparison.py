"""Comparing answer pairs off the serving path, cheaply: the exact match and length ratio at once,
and the MiniLM cosine for pairs gathered into batches (one embedding call for up to `batch_size`
pairs, after at most `max_wait_s`) in a helper process of low scheduling priority: it never holds
the serving process's GIL, and the OS runs serving work first. (With an `embedder_factory`, as in
tests, the batches run on a thread instead.) A pair's cosine can be sampled (`sample` < 1); when
the helper falls behind (`max_pending` pairs waiting), new pairs get no cosine (shed, counted)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial

import numpy as np

from shipyard.aio import cancel_and_wait

log = logging.getLogger("shipyard.experiments")
NICE = 10  # below every serving thread (0)


def _helper_started() -> None:
    """In the helper process: the lowest claim on the CPU, one torch thread."""
    with contextlib.suppress(OSError):
        os.nice(NICE)
    import torch

    torch.set_num_threads(1)


def _helper_cosines(pairs: list[tuple[str, str]]) -> list[float]:
    """In the helper process: each pair's MiniLM cosine (the model loads on the first batch)."""
    from shipyard.embeddings import shared_embedder

    return cosines(shared_embedder(), pairs)


def _thread_cosines(embedder_factory, pairs: list[tuple[str, str]]) -> list[float]:
    return cosines(embedder_factory(), pairs)


def cosines(embed, pairs: list[tuple[str, str]]) -> list[float]:
    vectors = embed([text for pair in pairs for text in pair])
    return [float(np.dot(vectors[2 * i], vectors[2 * i + 1])) for i in range(len(pairs))]


class PairComparer:
    def __init__(self, embedder_factory=None, batch_size: int = 32, max_wait_s: float = 0.25, sample: float = 1.0,
                 max_pending: int = 512):
        self.embedder_factory = embedder_factory
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.sample = sample
        self.max_pending = max_pending  # past this many waiting pairs (the helper starved of CPU), shed
        self.counts = {"embedded": 0, "shed": 0, "failed": 0}
        self._pending: list[tuple[str, str, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._pool: Executor | None = None

    async def compare(self, primary: str, other: str, sample: float | None = None) -> dict[str, float]:
        scores = compare(primary, other, None)
        sample = self.sample if sample is None else sample
        if sample < 1.0 and random.random() >= sample:
            return scores
        if len(self._pending) >= self.max_pending:  # the lowest priority: shed first, never queued unbounded
            self.counts["shed"] += 1
            return scores
        future = asyncio.get_running_loop().create_future()
        self._pending.append((primary or " ", other or " ", future))
        self._ensure_running()
        self._wake.set()  # the runner waits for the first pair, then for a full batch or max_wait_s
        try:
            scores["shadow.cosine"] = await future
            self.counts["embedded"] += 1
        except Exception as exc:  # no embedder here: the other comparisons still count
            self.counts["failed"] += 1
            log.warning("shadow comparison without embeddings: %s", exc)
        return scores

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._pool = self._pool or self._executor()
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.max_wait_s):  # gather a batch, but not for long
                    while len(self._pending) < self.batch_size:
                        self._wake.clear()
                        await self._wake.wait()
            batch, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
            if not batch:
                continue
            pairs = [(primary, other) for primary, other, _ in batch]
            job = (partial(_helper_cosines, pairs) if self.embedder_factory is None
                   else partial(_thread_cosines, self.embedder_factory, pairs))
            try:
                found = await asyncio.wrap_future(self._pool.submit(job))
            except Exception as exc:
                if isinstance(exc, BrokenProcessPool):  # the helper died (killed for memory?): a new one next
                    self._pool = self._executor()
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), cosine in zip(batch, found):
                if not future.done():
                    future.set_result(cosine)

    def _executor(self) -> Executor:
        if self.embedder_factory is not None:
            return ThreadPoolExecutor(1, "shadow-compare")
        return ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), initializer=_helper_started)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for _, _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def compare(primary: str, other: str, embed) -> dict[str, float]:
    """Two answers' agreement: exact match, length ratio (other ÷ primary) and embedding cosine."""
    scores = {"shadow.exact_match": float(primary.strip() == other.strip()),
              "shadow.length_ratio": len(other) / max(1, len(primary))}
    if embed is not None:
        vectors = embed([primary or " ", other or " "])
        scores["shadow.cosine"] = float(np.dot(vectors[0], vectors[1]))
    return scores
