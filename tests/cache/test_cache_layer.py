"""The cache layer on its own, over a scripted engine: a new model version never gets an old
answer, a frozen Redis is a miss and not an outage, and only complete answers are kept."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from shipyard.cache.engine import CachingEngine
from shipyard.cache.exact import ExactCache, ExactCacheConfig
from shipyard.engines.base import (Engine, EngineStats, GenerationChunk, GenerationRequest, ModelInfo, Prompt,
                                   SamplingParams, Usage)


class Scripted(Engine):
    """Answers 'a b c' in three chunks (or fails after the first, when told)."""

    def __init__(self, version: str = "v1"):
        self.model = ModelInfo("m", 2048)
        self.version = version
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None  # set: the answer's last chunk waits for it

    def identity(self) -> str:
        return f"scripted:{self.version}"

    async def start(self): ...
    async def stop(self): ...
    async def cancel(self, request_id): ...
    def ready(self): return True
    async def health(self): return True
    def stats(self): return EngineStats(0, 0, 0.0, 1, 1)

    def generate(self, request):
        self.calls += 1

        async def stream():
            for i, word in enumerate(("a ", "b ", "c")):
                if self.fail and i == 1:
                    yield GenerationChunk(request.request_id, 0, "", [], finish_reason="error",
                                          usage=Usage(3, 1))
                    return
                last = i == 2
                if last and self.gate is not None:
                    await self.gate.wait()
                yield GenerationChunk(request.request_id, 0, word, [i], finish_reason="length" if last else None,
                                      usage=Usage(3, 3) if last else None)
        return stream()


def _request(text: str = "hello", request_id: str = "r1") -> GenerationRequest:
    return GenerationRequest(request_id, Prompt(text=text), SamplingParams(temperature=0, max_tokens=3), scope="t1")


async def _run(engine: Engine, request: GenerationRequest) -> tuple[str, str | None]:
    text, status = "", None
    async for chunk in engine.generate(request):
        status = status or chunk.cache
        text += chunk.text
    return text, status


async def test_a_new_model_version_never_serves_an_old_answer():
    cache = ExactCache(ExactCacheConfig())
    old, new = Scripted("v1"), Scripted("v2")
    assert await _run(CachingEngine(old, "d", cache, None), _request()) == ("a b c", "miss")
    await asyncio.sleep(0.05)  # stored in the background
    assert await _run(CachingEngine(old, "d", cache, None), _request(request_id="r2")) == ("a b c", "hit")
    assert (await _run(CachingEngine(new, "d", cache, None), _request(request_id="r3")))[1] == "miss"
    assert new.calls == 1 and old.calls == 1


async def test_incomplete_answers_are_not_kept():
    inner = Scripted()
    layer = CachingEngine(inner, "d", ExactCache(ExactCacheConfig()), None)
    inner.fail = True
    await _run(layer, _request())
    inner.fail = False
    await asyncio.sleep(0.05)
    assert (await _run(layer, _request(request_id="r2")))[1] == "miss"
    # a client that leaves after the first chunk: the stream is closed, nothing is stored
    stream = layer.generate(_request("gone", "r3"))
    await anext(stream)
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert (await _run(layer, _request("gone", "r4")))[1] == "miss"


async def test_a_frozen_redis_is_a_miss_not_an_outage():
    import redis.asyncio as redis

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.extend(listener.accept() for _ in range(4)), daemon=True).start()
    client = redis.Redis(host="127.0.0.1", port=listener.getsockname()[1], socket_timeout=0.5,
                         socket_connect_timeout=0.5)
    inner = Scripted()
    layer = CachingEngine(inner, "d", ExactCache(ExactCacheConfig(), client), None)
    started = time.monotonic()
    assert await asyncio.wait_for(_run(layer, _request()), 10) == ("a b c", "miss")
    assert time.monotonic() - started < 2 and inner.calls == 1  # the lookup's deadline, not the socket's
    await asyncio.sleep(2.5)  # the background store gives up too
    await client.aclose()
    listener.close()


def test_prices_and_limits_count_what_was_spent():
    from shipyard.gateway.usage import price_of, spent_tokens

    prices = {"m": {"prompt": 1.0, "completion": 2.0}}
    assert price_of(prices, "m", 100, 10) == (100 * 1.0 + 10 * 2.0) / 1e6
    assert price_of(prices, "m", 100, 10, cached_tokens=60) == (40 * 1.0 + 60 * 0.5 + 10 * 2.0) / 1e6
    assert price_of(prices, "m", 100, 10, cache="hit") == 0.0
    assert price_of({"m": {**prices["m"], "cache_hit": 0.1}}, "m", 100, 10, cache="semantic") == 110 * 0.1 / 1e6
    assert spent_tokens(100, 10, 60, "miss") == 50 and spent_tokens(100, 10, 100, "hit") == 0


def test_a_failure_behind_the_cache_keeps_its_origin():
    """The cache layer reports with its first chunk like a remote engine, but an embedded engine
    that breaks mid-answer is still this server's fault (500), and an upstream's still a 502."""
    from shipyard.api.streaming import engine_failure

    local = CachingEngine(Scripted(), "d", ExactCache(ExactCacheConfig()), None)
    assert local.deferred_errors and engine_failure(local).status == 500
    remote_inner = Scripted()
    remote_inner.deferred_errors = True
    assert engine_failure(CachingEngine(remote_inner, "d", None, None)).status == 502


async def test_an_answer_finished_after_an_invalidation_is_not_served():
    """A request running while an admin forgets the cache must not put its (old) answer back."""
    from shipyard.cache.semantic import SemanticCache, SemanticCacheConfig

    class Embed:  # every prompt the same vector: any lookup would match
        def __call__(self, texts):
            import numpy as np

            return np.ones((len(texts), 4), dtype=np.float32) / 2

    inner = Scripted()
    semantic = SemanticCache(SemanticCacheConfig(deployments=["d"]), Embed())
    layer = CachingEngine(inner, "d", ExactCache(ExactCacheConfig()), semantic)
    inner.gate = asyncio.Event()
    running = asyncio.ensure_future(_run(layer, _request()))
    await asyncio.sleep(0.05)
    await layer.invalidate()  # the deployment's answers, while the request is half done
    inner.gate.set()
    assert await running == ("a b c", "miss")
    await asyncio.sleep(0.05)
    inner.gate = None
    assert (await _run(layer, _request(request_id="r2")))[1] == "miss"
    await asyncio.sleep(0.05)
    assert semantic.size() == 1  # that later answer is kept, the half-done one was not
