"""A deployment: one model name served by replicas, behind the one `Engine` interface.

`generate()` returns a routed stream. Its first chunk is where routing happens: pick a replica
(tier pool, then the balancer), start the request there and wait for its first chunk; on a
retriable failure (refused connection, overload, 5xx, no first token in time) count it against
that replica's breaker and try again elsewhere, with backoff. A request's own fault (400) is
never retried. When the replicas are exhausted, the fallback chain: other deployments in order,
then the response store's last good answer for the same prompt. After the first chunk nothing
is retried: the client has tokens. The api layer sees an engine, and learns from the first
chunk's `served_by` who answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from shipyard.engines.base import (
    Engine,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    Prompt,
    SamplingParams,
    Usage,
    estimate_prompt_tokens,
)
from shipyard.engines.errors import (
    RETRIABLE,
    EngineOverloadedError,
    EngineTimeoutError,
    EngineUnavailableError,
    UpstreamError,
)
from shipyard.engines.watchdog import Watchdog
from shipyard.routing.affinity import PrefixAffinity, prefix_blocks
from shipyard.routing.balancer import Balancer
from shipyard.routing.replica import Replica, ReplicaNameTaken
from shipyard.routing.resilience import Backoff
from shipyard.routing.response_store import ResponseStore, answer_key, replay

log = logging.getLogger("shipyard.routing")


@dataclass(frozen=True)
class RoutingPolicy:
    retries: int = 2  # further attempts after the first, on other replicas where there are any
    first_token_timeout_s: float = 60.0  # across all attempts: past it, 504
    total_timeout_s: float = 600.0  # a whole response
    backoff: Backoff = Backoff()
    retry_after_s: int = 1  # what a 503 "no healthy replica" tells the client


@dataclass
class RoutingCounters:
    """Read by the metrics collector at scrape time."""

    retries: int = 0
    fallbacks: int = 0
    store_answers: int = 0
    no_replica: int = 0


class DeploymentEngine(Engine):
    deferred_errors = True

    def __init__(self, name: str, replicas: list[Replica], balancer: Balancer, policy: RoutingPolicy,
                 fallbacks: list[str] | None = None, lookup: Callable[[str], Engine] | None = None,
                 store: ResponseStore | None = None, affinity: PrefixAffinity | None = None):
        self.name = name
        self.replicas = replicas
        self.balancer = balancer
        self.policy = policy
        self.fallbacks = list(fallbacks or [])
        self.lookup = lookup
        self.store = store
        self.affinity = affinity
        self.counters = RoutingCounters()
        # Builds a Replica from a config spec (set by the app, which knows the engine kinds).
        self.make_replica: Callable[..., Replica] | None = None  # (spec, check=None)
        # Scale to zero (set by the autoscaler): when no replica is available, a request awaits this
        # (holding it until one is ready, up to the deadline) or gets its RETRIABLE error.
        self.cold_start: Callable[[float], Awaitable[None]] | None = None
        self.model = ModelInfo(id=name, max_model_len=0, owned_by="shipyard", created=int(time.time()))
        self._active: dict[str, _RoutedStream] = {}
        self.requests_started = 0  # ever: the autoscaler sees requests that came and went between its looks
        self._changing: set[str] = set()  # replicas being added or removed (admin calls can race)

    # ---------------------------------------------------------------- lifecycle
    def identity(self) -> str:
        """Every replica's model: adding or replacing one changes what may answer."""
        return "routed:" + "|".join(sorted(r.engine.identity() for r in self.replicas))

    async def start(self) -> None:
        if not self.replicas:  # scaled to zero: the first request starts one
            return
        results = await asyncio.gather(*(r.engine.start() for r in self.replicas), return_exceptions=True)
        for replica, result in zip(self.replicas, results):
            if isinstance(result, BaseException):
                log.error("replica %s of %s failed to start: %s", replica.name, self.name, result)
        if all(isinstance(r, BaseException) for r in results):
            raise results[0]
        lengths = [r.engine.model.max_model_len for r in self.replicas if r.engine.model.max_model_len]
        self.model.max_model_len = min(lengths) if lengths else 0

    async def stop(self) -> None:
        await asyncio.gather(*(r.engine.stop() for r in self.replicas), return_exceptions=True)

    def ready(self) -> bool:
        """Serving: a replica is ready, or requests are held while one starts (scale to zero)."""
        return self.cold_start is not None or any(r.engine.ready() for r in self.replicas)

    async def health(self) -> bool:
        return all([await r.engine.health() for r in self.replicas])

    def stats(self) -> EngineStats:
        parts = [r.engine.stats() for r in self.replicas]
        return EngineStats(num_waiting=sum(p.num_waiting for p in parts), num_running=sum(p.num_running for p in parts),
                           kv_cache_usage=max((p.kv_cache_usage for p in parts), default=0.0),
                           max_num_seqs=sum(p.max_num_seqs for p in parts),
                           max_waiting=sum(p.max_waiting for p in parts))

    def _any_engine(self) -> Engine | None:
        for replica in self.replicas:
            if replica.engine.ready():
                return replica.engine
        return self.replicas[0].engine if self.replicas else None

    async def encode(self, prompt: Prompt, add_special_tokens: bool = True) -> list[int] | None:
        engine = self._any_engine()  # scaled to zero: no tokenizer to ask, the gateway estimates
        return await engine.encode(prompt, add_special_tokens) if engine is not None else None

    async def prepare(self, prompt: Prompt, params: SamplingParams) -> None:
        if (engine := self._any_engine()) is not None:  # scaled to zero: the replica checks it when it starts
            await engine.prepare(prompt, params)

    async def decode(self, token_ids: list[int]) -> str:
        engine = self._any_engine()
        if engine is None:
            raise EngineUnavailableError(f"'{self.name}' is scaled to zero: no replica to detokenize with.")
        return await engine.decode(token_ids)

    def token_strings(self, token_ids: list[int]) -> list[str] | None:
        engine = self._any_engine()
        return engine.token_strings(token_ids) if engine is not None else None

    # ---------------------------------------------------------------- routing
    def choose(self, priority: int, exclude: set[int], request: GenerationRequest | None = None) -> Replica | None:
        """Tier routing first (the highest pool the caller's tier reaches that has a live
        replica), then prefix affinity, then the balancer among that pool's live replicas."""
        live = [r for r in self.replicas if r.available()]
        untried = [r for r in live if id(r) not in exclude] or live
        eligible = [r for r in untried if r.min_tier <= priority]
        if not eligible:
            return None
        pool = max(r.min_tier for r in eligible)
        candidates = [r for r in eligible if r.min_tier == pool]
        if self.affinity is None or request is None:
            return self.balancer.pick(candidates)
        blocks = prefix_blocks(request)
        chosen = self.affinity.pick(blocks, candidates) or self.balancer.pick(candidates)
        self.affinity.remember(blocks, chosen)
        return chosen

    def generate(self, request: GenerationRequest) -> _RoutedStream:
        self.requests_started += 1
        stream = _RoutedStream(self, request)
        self._active[request.request_id] = stream
        return stream

    async def cancel(self, request_id: str) -> None:
        stream = self._active.get(request_id)
        if stream is not None and stream.engine is not None:
            await stream.engine.cancel(request_id)

    def routing_snapshot(self) -> dict:
        """For the metrics collector: counters, and per replica whether it is up, its breaker,
        what this gateway has in flight there."""
        affinity = self.affinity
        return {"counters": {**vars(self.counters), "affinity_routed": affinity.routed if affinity else 0,
                             "affinity_shed": affinity.shed if affinity else 0},
                "replicas": [{"name": r.name, "up": r.engine.ready(), "breaker": r.breaker.state,
                              "outstanding": r.outstanding, "draining": r.draining} for r in self.replicas]}

    async def add_replica(self, replica: Replica) -> None:
        """Join the pool live: started first, taken into routing once its engine is ready."""
        if replica.name in self._changing or any(r.name == replica.name for r in self.replicas):
            raise ReplicaNameTaken(f"'{self.name}' already has a replica named '{replica.name}'")
        self._changing.add(replica.name)  # held across the start, so a second add of the name is refused
        try:
            try:
                await replica.engine.start()
            except BaseException:
                with contextlib.suppress(Exception):  # whatever it had started (a child process) goes too
                    await replica.engine.stop()
                raise
            self.replicas = [*self.replicas, replica]
        finally:
            self._changing.discard(replica.name)

    async def remove_replica(self, name: str, drain_timeout_s: float = 60.0, allow_last: bool = False) -> None:
        """Leave the pool live: drained (no new requests), its in-flight requests given up to
        `drain_timeout_s` to finish, then stopped. The last replica goes only with `allow_last`
        (scale to zero, where `cold_start` holds the requests that come next)."""
        replica = self.replica(name)
        if name in self._changing:
            raise ValueError(f"'{name}' is already being removed from '{self.name}'")
        if not allow_last and not [r for r in self.replicas if r is not replica and r.name not in self._changing]:
            raise ValueError(f"'{name}' is the last replica of '{self.name}'")  # counting those on their way out
        self._changing.add(name)
        try:
            replica.draining = True
            deadline = time.monotonic() + drain_timeout_s
            while replica.outstanding > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self.replicas = [r for r in self.replicas if r is not replica]
            if self.affinity is not None:
                self.affinity.forget(replica.name)
            await replica.engine.stop()
        finally:
            self._changing.discard(name)

    def replica(self, name: str) -> Replica:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        raise KeyError(name)


class _RoutedStream:
    def __init__(self, deployment: DeploymentEngine, request: GenerationRequest):
        self.deployment = deployment
        self.request = request
        self.engine: Engine | None = None  # whichever engine is answering
        self._inner: AsyncIterator[GenerationChunk] | None = None
        self._replica: Replica | None = None
        self._first: GenerationChunk | None = None
        self._total = Watchdog(deployment.policy.total_timeout_s, idle=False)  # one timer, not one per chunk
        self._recorded: list[GenerationChunk] = []  # a deterministic answer, for the response store
        self._closed = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._closed:
            raise StopAsyncIteration
        if self._inner is None:
            await self._connect()
        if self._first is not None:
            chunk, self._first = self._first, None
        else:
            try:
                chunk = await self._total.guard(anext(self._inner))
            except StopAsyncIteration:
                await self.aclose()
                raise
            except Exception:  # past the total timeout, or a failure: tokens have gone out, so end with an error
                await self.aclose()
                return GenerationChunk(self.request.request_id, 0, "", [], finish_reason="error",
                                       usage=Usage(estimate_prompt_tokens(self.request.prompt), 0))
        self._remember(chunk)
        if chunk.usage is not None:
            self._release()
        return chunk

    async def _connect(self) -> None:
        deployment, policy, request = self.deployment, self.deployment.policy, self.request
        deadline = time.monotonic() + policy.first_token_timeout_s
        tried: set[int] = set()
        last_error: Exception | None = None
        if deployment.cold_start is not None and not any(r.available() for r in deployment.replicas):
            try:  # held by the buffer's own wait limit; the first-token deadline starts once a replica is there
                await deployment.cold_start(math.inf)
            except RETRIABLE:
                if await self._fall_back():
                    return
                raise
            deadline = time.monotonic() + policy.first_token_timeout_s
        retries = policy.retries if request.max_retries is None else request.max_retries
        for attempt in range(retries + 1):
            replica = deployment.choose(request.priority, tried, request)
            if replica is None:
                break
            tried.add(id(replica))
            if attempt:
                deployment.counters.retries += 1
            try:
                await self._start_on(replica.engine, replica, deadline)
                return
            except RETRIABLE as exc:
                last_error = exc
                log.warning("%s: replica %s failed (%s: %s)%s", deployment.name, replica.name, type(exc).__name__,
                            exc, "; retrying" if attempt < retries else "")
                if time.monotonic() >= deadline:
                    break
                retry_after = getattr(exc, "retry_after_s", 0.0) or 0.0
                await asyncio.sleep(min(policy.backoff.delay(attempt, retry_after), max(0.0, deadline - time.monotonic())))
        if await self._fall_back():
            return
        raise self._exhausted(last_error)

    async def _start_on(self, engine: Engine, replica: Replica | None, deadline: float) -> None:
        """Start the request on one engine and wait for its first chunk (RETRIABLE on failure)."""
        if replica is not None:
            replica.breaker.started()
            replica.outstanding += 1
        stream = None
        try:
            stream = engine.generate(self.request)
            async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                first = await anext(stream)
        except StopAsyncIteration:
            error: Exception = UpstreamError("The engine ended the response without a token.")
        except asyncio.TimeoutError:
            error = EngineTimeoutError("No first token in time.")
        except RETRIABLE as exc:
            error = exc
        except BaseException:  # the request's own fault (400 and the like): the replica is fine
            if replica is not None:
                replica.outstanding -= 1
                replica.breaker.success()
            if stream is not None:
                await stream.aclose()
            raise
        else:
            if replica is not None:
                replica.breaker.success()
            self.engine, self._inner, self._replica = engine, stream, replica
            first.served_by = replica.name if replica is not None else first.served_by
            self._first = first
            return
        if replica is not None:
            replica.outstanding -= 1
            replica.breaker.failure()
        if stream is not None:
            await stream.aclose()
        raise error

    async def _fall_back(self) -> bool:
        deployment = self.deployment
        for name in deployment.fallbacks:
            engine = deployment.lookup(name) if deployment.lookup else None
            if engine is None:
                continue
            try:
                await self._start_on(engine, None, time.monotonic() + deployment.policy.first_token_timeout_s)
            except RETRIABLE as exc:
                log.warning("%s: fallback %s failed too (%s)", deployment.name, name, type(exc).__name__)
                continue
            deployment.counters.fallbacks += 1
            self._first.served_by = f"fallback:{name}"
            log.warning("%s: answered by the fallback deployment %s", deployment.name, name)
            return True
        if deployment.store is not None:
            answer = deployment.store.recall(answer_key(deployment.name, self.request))
            if answer is not None:
                deployment.counters.store_answers += 1
                self._inner = replay(self.request, answer)
                self._first = await anext(self._inner)
                self._first.served_by = "response-store"
                log.warning("%s: answered from the response store", deployment.name)
                return True
        return False

    def _exhausted(self, last_error: Exception | None) -> Exception:
        deployment = self.deployment
        if last_error is None or isinstance(last_error, EngineUnavailableError):
            deployment.counters.no_replica += 1
            return EngineUnavailableError(f"No healthy replica of '{deployment.name}' is available.")
        if isinstance(last_error, (EngineTimeoutError, EngineOverloadedError)):
            return last_error
        return UpstreamError(f"Every replica of '{deployment.name}' failed: {last_error}")

    def _remember(self, chunk: GenerationChunk) -> None:
        store = self.deployment.store
        if store is None or not store.keeps(self.request):
            return  # only answers that the same question would get again
        self._recorded.append(chunk)
        if chunk.usage is not None:
            store.remember(answer_key(self.deployment.name, self.request), self._recorded)

    def _release(self) -> None:
        if self._replica is not None:
            self._replica.outstanding -= 1
            self._replica = None
        self.deployment._active.pop(self.request.request_id, None)
        self._total.close()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()
        if self._inner is not None:
            await self._inner.aclose()

