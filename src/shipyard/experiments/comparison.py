"""Comparing answer pairs off the serving path, cheaply: the exact match and length ratio at once,
and the MiniLM cosine for pairs gathered into batches (one embedding call for up to `batch_size`
pairs, after at most `max_wait_s`) on one background thread whose scheduling priority is lowered,
so serving threads always run first. A pair's cosine can be sampled (`sample` < 1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shipyard.aio import cancel_and_wait
from shipyard.experiments.copies import compare

log = logging.getLogger("shipyard.experiments")
NICE = 10  # below every serving thread (0)


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux: a thread's own niceness
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


class PairComparer:
    def __init__(self, embedder_factory=None, batch_size: int = 32, max_wait_s: float = 0.25, sample: float = 1.0):
        self.embedder_factory = embedder_factory
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.sample = sample
        self._pending: list[tuple[str, str, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def compare(self, primary: str, other: str) -> dict[str, float]:
        scores = compare(primary, other, None)
        if self.sample < 1.0 and random.random() >= self.sample:
            return scores
        future = asyncio.get_running_loop().create_future()
        self._pending.append((primary or " ", other or " ", future))
        self._ensure_running()
        self._wake.set()  # the runner waits for the first pair, then for a full batch or max_wait_s
        try:
            scores["shadow.cosine"] = await future
        except Exception as exc:  # no embedder here: the other comparisons still count
            log.warning("shadow comparison without embeddings: %s", exc)
        return scores

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._pool = self._pool or ThreadPoolExecutor(1, "shadow-compare", initializer=_lower_priority)
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
            try:
                cosines = await asyncio.get_running_loop().run_in_executor(self._pool, self._cosines, batch)
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), cosine in zip(batch, cosines):
                if not future.done():
                    future.set_result(cosine)

    def _cosines(self, batch) -> list[float]:
        embed = self._embedder()
        texts = [text for primary, other, _ in batch for text in (primary, other)]
        vectors = embed(texts)
        return [float(np.dot(vectors[2 * i], vectors[2 * i + 1])) for i in range(len(batch))]

    def _embedder(self):
        if self.embedder_factory is not None:
            return self.embedder_factory()
        from shipyard.embeddings import shared_embedder

        return shared_embedder()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for _, _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
