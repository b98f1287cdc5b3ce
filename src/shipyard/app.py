"""Builds the ASGI app from config: store → gateway → engines → router → api, plus metrics."""

from __future__ import annotations

import asyncio
import gc
import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable

from fastapi import FastAPI
from pydantic import TypeAdapter

from shipyard import __version__
from shipyard.api import (admin_routes, alert_routes, cache_routes, deployment_routes, experiment_routes,
                          feedback_routes, monitor_routes, openai_routes, ops_routes, review_routes, tokenize_routes,
                          trigger_routes, websocket)
from shipyard.api.errors import install_error_handlers
from shipyard.dashboard import routes as dashboard_routes
from shipyard.dashboard.routes import Refused, refused
from shipyard.dashboard.session import Sessions
from shipyard.api.guard import RequestGuard
from shipyard.api.openapi import install_openapi
from shipyard.api.middleware import RequestContextMiddleware
from shipyard.api.openai_routes import Services
from shipyard.experiments.assembly import build_improvement, review_text_deployments
from shipyard.config import Replica as ReplicaSpec
from shipyard.config import (
    BreakerConfig,
    LaunchedReplica,
    RoutedDeployment,
    ShipyardConfig,
    LlamaCppDeployment,
    LlamaCppReplica,
    TransformersDeployment,
    TransformersReplica,
    TritonDeployment,
    UpstreamDeployment,
)
from shipyard.cache.engine import CachingEngine
from shipyard.cache.exact import ExactCache
from shipyard.cache.semantic import SemanticCache
from shipyard.engines.base import Engine
from shipyard.monitor.scores import ScoreWriter
from shipyard.monitor.assembly import build_monitor, compute_rate_of
from shipyard.engines.launch import LaunchedEngine
from shipyard.engines.llamacpp_engine import LlamaCppEngine
from shipyard.engines.transformers_engine import TransformersEngine
from shipyard.engines.upstream import OpenAIHTTPEngine, TritonEngine
from shipyard.gateway.admission import TieredAdmission
from shipyard.gateway.auth import Authenticator, InternalTokenAuthenticator, Limits
from shipyard.gateway.keys import load_pepper
from shipyard.gateway.keystore import SYSTEM_TENANT, KeySpec, KeyStore
from shipyard.gateway.limits import InProcessLimiter
from shipyard.gateway.redis_limits import RedisLimiter, check_keeps_keys
from shipyard.gateway.roles import Role
from shipyard.gateway.service import Gateway
from shipyard.gateway.usage import UsageMeter
from shipyard.monitor.gpu import busiest_gpu
from shipyard.monitor.metrics import ServingMetrics
from shipyard.routing.affinity import PrefixAffinity
from shipyard.routing.balancer import Balancer
from shipyard.routing.deployment import DeploymentEngine, RoutingPolicy
from shipyard.routing.replica import Replica
from shipyard.routing.resilience import CircuitBreaker
from shipyard.routing.response_store import ResponseStore
from shipyard.routing.router import Router
from shipyard.scaling.local import LocalAutoscaler, auto_replica_name, autoscaler_families
from shipyard.scaling.ray_runtime import RayServeAutoscaler, replica_token
from shipyard.store.db import Database, default_url

log = logging.getLogger("shipyard.app")

ADMIN_KEY_MIN_LENGTH = 20


def _p95_latency(metrics: ServingMetrics, name: str):
    """The autoscaler's latency signal: end-to-end P95 over the last minute (None without windows)."""
    if metrics.health is None:
        return lambda: None
    return lambda: metrics.health.of(name).latency["e2e"].summary(60.0, (0.95,))["p95"]


def _template_replicas(name: str, scaling) -> list:
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
            engines[name] = DeploymentEngine(name, [Replica(name, _replica_engine(deployment, name, name))],
                                             Balancer("round_robin"), RoutingPolicy(), lookup=engines.get)
            engines[name].make_replica = _replica_factory(name, BreakerConfig())
        else:
            breaker = deployment.breaker
            replicas = []
            for index, spec in enumerate(deployment.replicas or _template_replicas(name, deployment.autoscaling)):
                replica_name = spec.name or f"{name}-{index}"
                replicas.append(Replica(replica_name, _replica_engine(spec, name, replica_name), weight=spec.weight,
                                        min_tier=spec.min_tier,
                                        breaker=CircuitBreaker(breaker.failures, breaker.window_s, breaker.cooldown_s)))
            policy = RoutingPolicy(retries=deployment.retries, first_token_timeout_s=deployment.first_token_timeout_s,
                                   total_timeout_s=deployment.total_timeout_s,
                                   retry_after_s=config.server.retry_after_s)
            affinity = PrefixAffinity(deployment.affinity_slack) if deployment.affinity_on else None
            engines[name] = DeploymentEngine(name, replicas, Balancer(deployment.balancer), policy, deployment.fallback,
                                             engines.get, ResponseStore() if deployment.response_store else None,
                                             affinity)
            engines[name].make_replica = _replica_factory(name, breaker)
    return engines


def _replica_factory(deployment: str, breaker):
    """A replica spec (as in shipyard.yaml) → a Replica, for replicas added through the admin API."""
    adapter = TypeAdapter(ReplicaSpec)

    def make(raw: dict, check: Callable | None = None) -> Replica:
        spec = adapter.validate_python(raw)
        if check is not None:
            check(spec)
        name = spec.name or f"{deployment}-{secrets.token_hex(3)}"
        return Replica(name, _replica_engine(spec, deployment, name), weight=spec.weight, min_tier=spec.min_tier,
                       breaker=CircuitBreaker(breaker.failures, breaker.window_s, breaker.cooldown_s))

    return make


def _replica_engine(spec, deployment: str, replica_name: str) -> Engine:
    if isinstance(spec, TransformersReplica):
        return TransformersEngine(spec, model_id=deployment)
    if isinstance(spec, LlamaCppReplica):
        return LlamaCppEngine(spec, model_id=deployment)
    if isinstance(spec, LaunchedReplica):
        return LaunchedEngine(spec, deployment, replica_name)
    if isinstance(spec, TritonDeployment):
        return TritonEngine(spec, deployment)
    return OpenAIHTTPEngine(spec, deployment)


def _redis_url(config: ShipyardConfig) -> str | None:
    return config.gateway.redis_url or os.environ.get("SHIPYARD_REDIS_URL")


def _cache_redis_url(config: ShipyardConfig) -> str | None:
    return config.cache.redis_url or os.environ.get("SHIPYARD_CACHE_REDIS_URL")


def _redis_client(url: str | None):
    if not url:
        return None
    import redis.asyncio as redis

    # A blocking pool: a burst waits for a connection instead of failing as if Redis were down (a
    # frozen Redis is still noticed in 1 s: that is the socket timeout, per command).
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=128, timeout=10.0, socket_timeout=1.0,
                                                 socket_connect_timeout=1.0, health_check_interval=30)
    return redis.Redis(connection_pool=pool)


WORKER_PROCESS_ENV = "SHIPYARD_SERVER_WORKER"  # set in each of several server processes


def build_app(config: ShipyardConfig, engines: dict[str, Engine] | None = None) -> FastAPI:
    engines = engines if engines is not None else build_engines(config)
    redis = _redis_client(_redis_url(config))
    cache_url = _cache_redis_url(config)
    cache_redis = _redis_client(cache_url) if cache_url else redis  # the limits' own, unless one is given
    caches = build_caches(config, engines, cache_redis)
    router = Router(engines, caches)
    metrics = ServingMetrics(router.engines, lambda: router.front, windows=config.monitor.enabled,
                             slice_s=config.monitor.window_slice_s)
    data_dir = config.store.resolved_data_dir()
    db = Database(config.store.url or default_url(data_dir))
    pepper = load_pepper(data_dir)
    keystore = KeyStore(db, pepper)
    gw = config.gateway
    authenticator = Authenticator(keystore, redis, gw.key_cache_ttl_s) if config.auth == "enabled" else None
    limiter = RedisLimiter(redis, fail_open=gw.redis_failure == "open") if redis is not None else InProcessLimiter()
    # One spool per process when several workers share the data folder (api/workers.py)
    spool = f"usage-spool-{os.getpid()}.jsonl" if os.environ.get(WORKER_PROCESS_ENV) else "usage-spool.jsonl"
    meter = UsageMeter(db, data_dir / spool, gw.usage_flush_interval_s)
    admissions = {name: TieredAdmission(gw.max_inflight, gw.max_queue, gw.queue_timeout_s,
                                        config.server.retry_after_s) for name in config.deployments}
    deployment_limits = {name: Limits(rpm=l.rpm, tpm=l.tpm, max_concurrent=l.max_concurrent)
                         for name, l in gw.deployment_limits.items()}
    gateway = Gateway(authenticator, limiter, meter, admissions, deployment_limits, gw.prices,
                      gw.default_completion_estimate, compute_rate_of(router, config.monitor.compute_prices))
    score_writer = ScoreWriter(db, gw.usage_flush_interval_s)
    autoscalers = {name: RayServeAutoscaler(engines[name], spec.autoscaling, replica_token(pepper, name))
                   if spec.autoscaling.runtime == "ray" else
                   LocalAutoscaler(engines[name], spec.autoscaling, admissions.get(name),
                                   p95_latency=_p95_latency(metrics, name), gpu_utilization=busiest_gpu)
                   for name, spec in config.deployments.items()
                   if isinstance(spec, RoutedDeployment) and spec.autoscaling is not None}
    if autoscalers:
        metrics.gauge_sources.append(lambda: autoscaler_families(autoscalers))
    monitor = (build_monitor(config.monitor, metrics, router, db, data_dir, score_writer) if config.monitor.enabled
               else None)
    improvement = build_improvement(config, db, router, gateway, score_writer, monitor)
    metrics.gauge_sources.append(improvement.shadow.families)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if redis is not None:
            await check_keeps_keys(redis, _redis_url(config))
        await db.migrate()  # a no-op in a worker process: its parent migrated (api/workers.py)
        await _bootstrap_admin(keystore, config, data_dir)
        await meter.start()
        await score_writer.start()
        if monitor is not None:
            await monitor.start()
        try:
            async with improvement.running(), _engines_running(router, caches):
                for autoscaler in autoscalers.values():
                    await autoscaler.start()
                try:
                    yield
                finally:  # before the engines stop: no replica is launched during shutdown
                    for autoscaler in autoscalers.values():
                        await autoscaler.stop()
        finally:
            if monitor is not None:
                await monitor.stop()
            await limiter.close()  # queued limit corrections
            await meter.stop()  # flush every usage record (to the database or the spool)
            await score_writer.stop()
            await db.close()
            for exact in {id(c.exact): c.exact for c in caches.values() if c.exact is not None}.values():
                await exact.close()
            if redis is not None:
                await redis.aclose()
            if cache_redis is not None and cache_redis is not redis:
                await cache_redis.aclose()

    services = Services(router=router, metrics=metrics, gateway=gateway, keystore=keystore, db=db,
                        max_sequences_per_request=config.server.max_sequences_per_request,
                        observers=[*(monitor.observers if monitor else []), *improvement.observers],
                        monitor=monitor,
                        text_deployments=(monitor.text_deployments if monitor else frozenset())
                        | review_text_deployments(config),
                        autoscalers=autoscalers, experiments=improvement.experiments, canary=improvement.canary,
                        triggers=improvement.triggers, replays=improvement.replays)
    app = _assemble(config, services, lifespan, (openai_routes, tokenize_routes, websocket, ops_routes, admin_routes,
                                                 deployment_routes, cache_routes, monitor_routes, alert_routes,
                                                 dashboard_routes, feedback_routes, experiment_routes, review_routes,
                                                 trigger_routes))
    app.state.dashboard_sessions = Sessions(pepper, keystore)
    app.add_exception_handler(Refused, refused)
    return app


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


def build_worker_app(config: ShipyardConfig, token: str, engines: dict[str, Engine] | None = None,
                     started: bool = False) -> FastAPI:
    """`shipyard worker`: the engine(s) behind the same OpenAI routes, for a gateway in front.

    No store, no tenant keys, no usage: the gateway in front authenticates tenants, limits and
    meters. Every route but /health and /ready needs the worker's internal token. `started`: the
    engines given are loaded already."""
    router = Router(engines if engines is not None else build_engines(config))
    metrics = ServingMetrics(router.engines, windows=False)  # no monitor routes here: the gateway in front has them
    gw = config.gateway
    limiter = InProcessLimiter()
    admissions = {name: TieredAdmission(gw.max_inflight, gw.max_queue, gw.queue_timeout_s,
                                        config.server.retry_after_s) for name in config.deployments}
    gateway = Gateway(InternalTokenAuthenticator(token), limiter, None, admissions, {}, {},
                      gw.default_completion_estimate)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if started:  # loaded before the app was built (a Ray replica takes no request until then)
            try:
                yield
            finally:
                await router.stop()
            return
        async with _engines_running(router):
            yield

    services = Services(router=router, metrics=metrics, gateway=gateway,
                        max_sequences_per_request=config.server.max_sequences_per_request)
    return _assemble(config, services, lifespan, (openai_routes, tokenize_routes, websocket, ops_routes))


@contextlib.asynccontextmanager
async def _engines_running(router: Router, caches: dict[str, CachingEngine] | None = None):
    """Models load in the background: /health answers at once, /ready says 503 until loaded."""
    loading = asyncio.create_task(_start_then_freeze(router, caches or {}))
    loading.add_done_callback(_report_load_failure)
    try:
        yield
    finally:
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loading
        await router.stop()


async def _start_then_freeze(router: Router, caches: dict[str, CachingEngine]) -> None:
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


def _assemble(config: ShipyardConfig, services: Services, lifespan, modules) -> FastAPI:
    app = FastAPI(title="Shipyard", version=__version__, description="OpenAI-compatible inference server.",
                  lifespan=lifespan)
    app.state.services = services
    app.state.config = config
    install_error_handlers(app, config.server.retry_after_s)
    install_openapi(app)
    for module in modules:
        app.include_router(module.router)
    routes = [route for module in modules for route in module.router.routes]
    # Outermost first: the request context (ids, body bounds and timeouts, the access log), then
    # the guard (authentication and content type, before any body byte is read).
    app.add_middleware(RequestGuard, routes=routes, gateway=services.gateway)
    gateway = services.gateway

    def on_refused(record) -> None:
        gateway.record_refused(record.tenant_id, record.key_id, record.usage_id, record.deployment or record.model or "",
                               record.status, (time.monotonic() - record.arrival) * 1000, record.user)

    app.add_middleware(RequestContextMiddleware, metrics=services.metrics, max_body_bytes=config.server.max_body_bytes,
                       body_timeout_s=config.server.body_timeout_s,
                       body_idle_timeout_s=config.server.body_idle_timeout_s, on_refused=on_refused)
    return app


async def bootstrap_store(config: ShipyardConfig) -> None:
    """Migrate the schema and bootstrap the admin key, once, before several workers start."""
    data_dir = config.store.resolved_data_dir()
    db = Database(config.store.url or default_url(data_dir))
    try:
        await db.migrate()
        await _bootstrap_admin(KeyStore(db, load_pepper(data_dir)), config, data_dir)
    finally:
        await db.close()


async def _bootstrap_admin(keystore: KeyStore, config: ShipyardConfig, data_dir) -> None:
    """SHIPYARD_ADMIN_KEY becomes the admin key (hashed); without it, a first admin key is shown once."""
    admin_key = os.environ.get("SHIPYARD_ADMIN_KEY") or None
    if admin_key is not None and len(admin_key) < ADMIN_KEY_MIN_LENGTH:
        raise SystemExit(f"SHIPYARD_ADMIN_KEY must be at least {ADMIN_KEY_MIN_LENGTH} characters long.")
    await keystore.bootstrap_admin(admin_key)
    if config.auth != "enabled" or admin_key is not None or await keystore.has_admin():
        return
    _, plaintext = await keystore.create_key(KeySpec(tenant_id=SYSTEM_TENANT, role=Role.ADMIN.value,
                                                     name="first admin", tier=100))
    # Shown once, never logged: on a terminal it is printed; otherwise it goes to a 0600 file.
    if sys.stderr.isatty():
        sys.stderr.write(f"\nFirst admin API key (shown once, store it now):\n  {plaintext}\n\n")
    else:
        path = data_dir / "first-admin-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(plaintext + "\n")
        log.warning("created the first admin API key; it is in %s (mode 0600): read it once, then delete it",
                    path)


def _report_load_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loading models failed: %s", task.exception(), exc_info=task.exception())
