"""The engines, caches and Redis clients a config describes: one engine per deployment (routed
deployments behind a `DeploymentEngine`), the cache layer in front of those that have one, and the
lifecycle that loads the models in the background."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
from collections.abc import Callable

from pydantic import TypeAdapter

from shipyard.cache.engine import CachingEngine
from shipyard.cache.exact import ExactCache
from shipyard.cache.semantic import SemanticCache
from shipyard.config import ShipyardConfig
from shipyard.routing.settings import (
    BreakerConfig,
    LaunchedReplica,
    LlamaCppDeployment,
    LlamaCppReplica,
    TransformersDeployment,
    TransformersReplica,
    TritonDeployment,
    UpstreamDeployment,
)
from shipyard.routing.settings import Replica as ReplicaSpec
from shipyard.engines.base import Engine
from shipyard.engines.embedding_engine import EmbeddingEngine
from shipyard.engines.launch import LaunchedEngine
from shipyard.engines.llamacpp_engine import LlamaCppEngine
from shipyard.engines.transformers_engine import TransformersEngine
from shipyard.engines.upstream import OpenAIHTTPEngine, TritonEngine
from shipyard.routing.affinity import PrefixAffinity
from shipyard.routing.balancer import Balancer
from shipyard.routing.deployment import DeploymentEngine, RoutingPolicy
from shipyard.routing.replica import Replica
from shipyard.routing.resilience import CircuitBreaker
from shipyard.routing.response_store import ResponseStore
from shipyard.routing.router import Router
from shipyard.scaling.local import auto_replica_name

log = logging.getLogger("shipyard.app")


def template_replicas(name: str, scaling) -> list:
    """An autoscaled deployment without listed replicas starts min_replicas of its template (on
    Ray, the cluster starts them)."""
    if scaling.runtime == "ray":
        return []
    template = scaling.replica.model_dump()
    return [type(scaling.replica)(**{**template, "name": auto_replica_name(name, number)})
            for number in range(1, scaling.min_replicas + 1)]


def build_engines(config: ShipyardConfig) -> dict[str, Engine]:
    """One engine per deployment: the embedded engine as it is, anything remote or replicated
    behind a routed `DeploymentEngine` (balancing, retries, breakers, fallbacks)."""
    engines: dict[str, Engine] = {}
    for name, deployment in config.deployments.items():
        if isinstance(deployment, TransformersDeployment):
            engines[name] = TransformersEngine(deployment, model_id=name)
        elif isinstance(deployment, LlamaCppDeployment):
            engines[name] = LlamaCppEngine(deployment, model_id=name)
        elif isinstance(deployment, (UpstreamDeployment, TritonDeployment)):  # one remote replica
            engines[name] = DeploymentEngine(name, [Replica(name, replica_engine(deployment, name, name))],
                                             Balancer("round_robin"), RoutingPolicy(), lookup=engines.get)
            engines[name].make_replica = replica_factory(name, BreakerConfig())
        else:
            breaker = deployment.breaker
            replicas = []
            for index, spec in enumerate(deployment.replicas or template_replicas(name, deployment.autoscaling)):
                replica_name = spec.name or f"{name}-{index}"
                replicas.append(Replica(replica_name, replica_engine(spec, name, replica_name), weight=spec.weight,
                                        min_tier=spec.min_tier,
                                        breaker=CircuitBreaker(breaker.failures, breaker.window_s, breaker.cooldown_s)))
            policy = RoutingPolicy(retries=deployment.retries, first_token_timeout_s=deployment.first_token_timeout_s,
                                   total_timeout_s=deployment.total_timeout_s,
                                   retry_after_s=config.server.retry_after_s)
            affinity = PrefixAffinity(deployment.affinity_slack) if deployment.affinity_on else None
            engines[name] = DeploymentEngine(name, replicas, Balancer(deployment.balancer), policy, deployment.fallback,
                                             engines.get, ResponseStore() if deployment.response_store else None,
                                             affinity)
            engines[name].make_replica = replica_factory(name, breaker)
    return engines


def replica_factory(deployment: str, breaker):
    """A replica spec (as in shipyard.yaml) → a Replica, for replicas added through the admin API."""
    adapter = TypeAdapter(ReplicaSpec)

    def make(raw: dict, check: Callable | None = None) -> Replica:
        spec = adapter.validate_python(raw)
        if check is not None:
            check(spec)
        name = spec.name or f"{deployment}-{secrets.token_hex(3)}"
        return Replica(name, replica_engine(spec, deployment, name), weight=spec.weight, min_tier=spec.min_tier,
                       breaker=CircuitBreaker(breaker.failures, breaker.window_s, breaker.cooldown_s))

    return make


def replica_engine(spec, deployment: str, replica_name: str) -> Engine:
    if isinstance(spec, TransformersReplica):
        return TransformersEngine(spec, model_id=deployment)
    if isinstance(spec, LlamaCppReplica):
        return LlamaCppEngine(spec, model_id=deployment)
    if isinstance(spec, LaunchedReplica):
        return LaunchedEngine(spec, deployment, replica_name)
    if isinstance(spec, TritonDeployment):
        return TritonEngine(spec, deployment)
    return OpenAIHTTPEngine(spec, deployment)


def redis_url_of(config: ShipyardConfig) -> str | None:
    return config.gateway.redis_url or os.environ.get("SHIPYARD_REDIS_URL")


def cache_redis_url_of(config: ShipyardConfig) -> str | None:
    return config.cache.redis_url or os.environ.get("SHIPYARD_CACHE_REDIS_URL")


def redis_client(url: str | None):
    if not url:
        return None
    import redis.asyncio as redis

    # A blocking pool: a burst waits for a connection instead of failing as if Redis were down (a
    # frozen Redis is still noticed in 1 s: that is the socket timeout, per command).
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=128, timeout=10.0, socket_timeout=1.0,
                                                 socket_connect_timeout=1.0, health_check_interval=30)
    return redis.Redis(connection_pool=pool)


def build_embedders(config: ShipyardConfig) -> dict[str, EmbeddingEngine]:
    return {name: EmbeddingEngine(spec, model_id=name) for name, spec in config.embeddings.items()}


def build_caches(config: ShipyardConfig, engines: dict[str, Engine], redis) -> dict[str, CachingEngine]:
    """The cache layer in front of each deployment that has one (exact: every deployment unless
    disabled; semantic: those that opt in). In Redis when the gateway has it, so every process
    shares one cache."""
    settings = config.cache
    exact = ExactCache(settings.exact, redis) if settings.exact.enabled else None
    semantic = SemanticCache(settings.semantic) if settings.semantic.deployments else None
    return {name: CachingEngine(engine, name, exact, semantic, name in settings.exact.sampled_deployments)
            for name, engine in engines.items()
            if exact is not None or (semantic is not None and semantic.enabled_for(name))}


@contextlib.asynccontextmanager
async def engines_running(router: Router, caches: dict[str, CachingEngine] | None = None):
    """Models load in the background: /health answers at once, /ready says 503 until loaded."""
    loading = asyncio.create_task(start_then_freeze(router, caches or {}))
    loading.add_done_callback(report_load_failure)
    try:
        yield
    finally:
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loading
        await router.stop()


async def start_then_freeze(router: Router, caches: dict[str, CachingEngine]) -> None:
    """Once the models are loaded, move every object that exists by then (modules, weights'
    wrappers, the app) out of the garbage collector's sight: it would otherwise walk that heap
    (torch, transformers: millions of objects) on every full collection, pausing the event loop
    for hundreds of milliseconds in the middle of serving."""
    await router.start()
    semantic = next((c.semantic for c in caches.values() if c.semantic is not None), None)
    if semantic is not None:  # the embedding model loads before serving, not on a first request
        await asyncio.to_thread(lambda: semantic.embedder)
    gc.collect()
    gc.freeze()


def report_load_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loading models failed: %s", task.exception(), exc_info=task.exception())
