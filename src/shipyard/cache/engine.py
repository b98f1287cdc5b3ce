"""The cache layer: an `Engine` in front of a deployment's engine.

A request is looked up in the exact cache, then (for deployments that opt in) in the semantic
cache; a hit replays the stored chunks without touching the engine. A miss streams from the
engine while recording, and a complete answer is stored in both. The request's first chunk says
what happened (`cache`: hit, semantic, miss or bypass), and the api turns it into the
`x-shipyard-cache` header; so this engine reports with its first chunk (`deferred_errors`).

Eligible: deterministic requests (temperature 0 or a seed), or any request for a deployment that
opted in to reusing sampled answers. A request may skip the lookup (`cache_control`
"no-cache": a refresh, still stored) or the cache entirely ("no-store" too): both are a bypass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from shipyard.cache import keys, recording
from shipyard.cache.exact import ExactCache
from shipyard.cache.semantic import SemanticCache
from shipyard.embeddings import EmbedderBusy
from shipyard.engines.base import Engine, GenerationChunk, GenerationRequest, Prompt, SamplingParams

log = logging.getLogger("shipyard.cache")


@dataclass
class CacheCounters:
    """Lookups and hits per layer, for /metrics."""

    queries: dict[str, int] = field(default_factory=lambda: {"exact": 0, "semantic": 0})
    hits: dict[str, int] = field(default_factory=lambda: {"exact": 0, "semantic": 0})
    bypassed: int = 0


class CachingEngine(Engine):
    deferred_errors = True

    def __init__(self, inner: Engine, deployment: str, exact: ExactCache | None, semantic: SemanticCache | None,
                 cache_sampled: bool = False):
        self.inner = inner
        self.deployment = deployment
        self.exact = exact
        self.semantic = semantic if semantic is not None and semantic.enabled_for(deployment) else None
        self.cache_sampled = cache_sampled
        self.counters = CacheCounters()
        self._storing: set[asyncio.Task] = set()

    @property
    def model(self):
        return self.inner.model

    @property
    def remote(self) -> bool:
        return self.inner.remote

    # The inner engine is started, stopped and watched by the router; these only pass through.
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def ready(self) -> bool:
        return self.inner.ready()

    async def health(self) -> bool:
        return await self.inner.health()

    def stats(self):
        return self.inner.stats()

    async def cancel(self, request_id: str) -> None:
        await self.inner.cancel(request_id)

    async def encode(self, prompt: Prompt, add_special_tokens: bool = True):
        return await self.inner.encode(prompt, add_special_tokens)

    async def prepare(self, prompt: Prompt, params: SamplingParams) -> None:
        await self.inner.prepare(prompt, params)

    async def decode(self, token_ids: list[int]) -> str:
        return await self.inner.decode(token_ids)

    def token_strings(self, token_ids: list[int]):
        return self.inner.token_strings(token_ids)

    def identity(self) -> str:
        return self.inner.identity()

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        eligible = (self.exact is not None or self.semantic is not None) and (
            self.cache_sampled or keys.deterministic(request.params))
        if not eligible or request.cache_control == "no-store":
            self.counters.bypassed += 1
            async for chunk in self._passthrough(request, "bypass"):
                yield chunk
            return
        partition = keys.partition(request.scope, self.deployment, self.inner.identity(), request.params)
        # Scoped as the request begins: an invalidation while it runs makes its answer unreachable.
        scoped = await self.exact.scope(keys.request_key(partition, request), request.scope, self.deployment) \
            if self.exact is not None else None
        epoch = self.semantic.epoch if self.semantic is not None else None
        text = keys.prompt_text(request) if self.semantic is not None else None
        vector = None
        if request.cache_control != "no-cache":
            if scoped is not None:
                self.counters.queries["exact"] += 1
                stored = await self.exact.get(scoped)
                if stored is not None:
                    self.counters.hits["exact"] += 1
                    for chunk in self._replay(stored, request, "hit", None):
                        yield chunk
                    return
            if text is not None:
                self.counters.queries["semantic"] += 1
                match = None
                try:
                    vector = await self.semantic.embed(text)
                    match = self.semantic.lookup(partition, vector)
                except EmbedderBusy:  # too many embeddings queued: a miss, and no store either
                    text = None
                except Exception:  # a broken embedder is a miss, never a failed request
                    log.exception("semantic cache lookup failed")
                if match is not None:
                    self.counters.hits["semantic"] += 1
                    for chunk in self._replay(match.answer, request, "semantic", match.similarity):
                        yield chunk
                    return
        recorded: list[GenerationChunk] = []
        async for chunk in self._passthrough(request, "bypass" if request.cache_control else "miss"):
            recorded.append(chunk)
            yield chunk
        if recording.complete(recorded):
            # Stored in the background: a slow cache never holds back the end of the response.
            answer = recording.encode(recorded)
            task = asyncio.ensure_future(self._store(request.scope, partition, scoped, text, vector, epoch, answer))
            self._storing.add(task)
            task.add_done_callback(self._storing.discard)

    async def _store(self, tenant: str, partition: str, scoped: str | None, text: str | None, vector, epoch,
                     answer: bytes) -> None:
        if scoped is not None:
            await self.exact.put(scoped, answer)
        if text is not None:
            try:
                if vector is None:
                    vector = await self.semantic.embed(text)
                self.semantic.add(partition, tenant, self.deployment, vector, answer, epoch)
            except EmbedderBusy:
                pass
            except Exception:  # a cache that cannot store is a cache that misses, never an error
                log.exception("semantic cache store failed")

    def _replay(self, stored: bytes, request: GenerationRequest, status: str, similarity: float | None):
        chunks = recording.decode(stored, request.request_id)
        chunks[0].cache, chunks[0].cache_similarity = status, similarity
        return chunks

    async def _passthrough(self, request: GenerationRequest, status: str) -> AsyncIterator[GenerationChunk]:
        stream = self.inner.generate(request)
        first = True
        try:
            async for chunk in stream:
                if first:
                    chunk.cache, first = status, False
                yield chunk
        finally:
            await stream.aclose()

    async def invalidate(self, tenant: str | None = None) -> None:
        """CacheUnavailable (from the exact cache) when its store did not take it yet."""
        if self.semantic is not None:  # in process: always taken
            self.semantic.invalidate(tenant, self.deployment)
        if self.exact is not None:
            await self.exact.invalidate(tenant, self.deployment)
