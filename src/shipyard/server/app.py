"""The composition root: the gateway's ASGI app from config, store → gateway → engines → router →
api, plus metrics, monitoring and experiments; the admin key's bootstrap."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from fastapi import FastAPI

from shipyard.api import embeddings_routes, feedback_routes, openai_routes, ops_routes, tokenize_routes, websocket
from shipyard.api.admin import accounts as accounts_routes
from shipyard.api.admin import alerts as alert_routes
from shipyard.api.admin import cache as cache_routes
from shipyard.api.admin import deployments as deployment_routes
from shipyard.api.admin import experiments as experiment_routes
from shipyard.api.admin import monitor as monitor_routes
from shipyard.api.admin import review as review_routes
from shipyard.api.admin import triggers as trigger_routes
from shipyard.inference.services import Services
from shipyard.config import RoutedDeployment, ShipyardConfig
from shipyard.dashboard import routes as dashboard_routes
from shipyard.dashboard.routes import Refused, refused
from shipyard.dashboard.session import Sessions
from shipyard.engines.base import Engine
from shipyard.experiments.assembly import build_improvement, review_text_deployments
from shipyard.api.errors import status_of
from shipyard.gateway.admission import TieredAdmission
from shipyard.gateway.auth import Authenticator, Limits
from shipyard.gateway.keys import load_pepper
from shipyard.gateway.keystore import SYSTEM_TENANT, KeySpec, KeyStore
from shipyard.gateway.limits import InProcessLimiter
from shipyard.gateway.redis_limits import RedisLimiter, check_keeps_keys
from shipyard.gateway.roles import Role
from shipyard.gateway.service import Gateway
from shipyard.gateway.usage import UsageMeter, compute_rate_of
from shipyard.hooks import RequestHooks
from shipyard.monitor.assembly import build_monitor
from shipyard.monitor.gpu import busiest_gpu
from shipyard.monitor.metrics import ServingMetrics
from shipyard.monitor.scores import ScoreWriter
from shipyard.routing.router import Router
from shipyard.scaling.local import LocalAutoscaler, autoscaler_families
from shipyard.scaling.ray_runtime import RayServeAutoscaler, replica_token
from shipyard.server.assembly import assemble
from shipyard.server.engines import (build_caches, build_embedders, build_engines, cache_redis_url_of,
                                     engines_running, redis_client, redis_url_of)
from shipyard.store.db import Database, default_url

log = logging.getLogger("shipyard.app")

ADMIN_KEY_MIN_LENGTH = 20


def ray_application():
    """The Ray replica's application builder, imported only when a deployment runs on Ray."""
    from shipyard.server.ray_replica import application

    return application


def _p95_latency(metrics: ServingMetrics, name: str):
    """The autoscaler's latency signal: end-to-end P95 over the last minute (None without windows)."""
    if metrics.health is None:
        return lambda: None
    return lambda: metrics.health.of(name).latency["e2e"].summary(60.0, (0.95,))["p95"]
















WORKER_PROCESS_ENV = "SHIPYARD_SERVER_WORKER"  # set in each of several server processes


def build_app(config: ShipyardConfig, engines: dict[str, Engine] | None = None) -> FastAPI:
    engines = engines if engines is not None else build_engines(config)
    redis = redis_client(redis_url_of(config))
    cache_url = cache_redis_url_of(config)
    cache_redis = redis_client(cache_url) if cache_url else redis  # the limits' own, unless one is given
    caches = build_caches(config, engines, cache_redis)
    router = Router(engines, caches, build_embedders(config))
    hooks = RequestHooks()  # how monitoring and experiments observe the request path
    metrics = ServingMetrics(router.watched, lambda: router.front, windows=config.monitor.enabled, hooks=hooks,
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
                                        config.server.retry_after_s) for name in (*config.deployments, *config.embeddings)}
    deployment_limits = {name: Limits(rpm=l.rpm, tpm=l.tpm, max_concurrent=l.max_concurrent)
                         for name, l in gw.deployment_limits.items()}
    gateway = Gateway(authenticator, limiter, meter, admissions, deployment_limits, gw.prices,
                      gw.default_completion_estimate, compute_rate_of(router.watched, config.monitor.compute_prices))
    score_writer = ScoreWriter(db, gw.usage_flush_interval_s)
    autoscalers = {name: RayServeAutoscaler(engines[name], spec.autoscaling, replica_token(pepper, name),
                                            ray_application())
                   if spec.autoscaling.runtime == "ray" else
                   LocalAutoscaler(engines[name], spec.autoscaling, admissions.get(name),
                                   p95_latency=_p95_latency(metrics, name), gpu_utilization=busiest_gpu)
                   for name, spec in config.deployments.items()
                   if isinstance(spec, RoutedDeployment) and spec.autoscaling is not None}
    if autoscalers:
        metrics.gauge_sources.append(lambda: autoscaler_families(autoscalers))
    monitor = (build_monitor(config.monitor, metrics, router, db, data_dir, score_writer, hooks) if config.monitor.enabled
               else None)
    improvement = build_improvement(config, db, router, gateway, score_writer, monitor, hooks)
    metrics.gauge_sources.append(improvement.shadow.families)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if redis is not None:
            await check_keeps_keys(redis, redis_url_of(config))
        await db.migrate()  # a no-op in a worker process: its parent migrated (api/workers.py)
        await bootstrap_admin(keystore, config, data_dir)
        await meter.start()
        await score_writer.start()
        if monitor is not None:
            await monitor.start()
        try:
            async with improvement.running(), engines_running(router, caches):
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
                        hooks=hooks, api_launch=config.server.api_launch, status_of=status_of,
                        monitor=monitor,
                        text_deployments=(monitor.text_deployments if monitor else frozenset())
                        | review_text_deployments(config),
                        autoscalers=autoscalers, experiments=improvement.experiments, canary=improvement.canary,
                        triggers=improvement.triggers, replays=improvement.replays)
    app = assemble(config, services, lifespan, (openai_routes, embeddings_routes, tokenize_routes, websocket,
                                                 ops_routes, feedback_routes, accounts_routes, deployment_routes, cache_routes, monitor_routes,
                                                 alert_routes, experiment_routes, review_routes, trigger_routes,
                                                 dashboard_routes))
    app.state.dashboard_sessions = Sessions(pepper, keystore)
    app.add_exception_handler(Refused, refused)
    return app










async def bootstrap_store(config: ShipyardConfig) -> None:
    """Migrate the schema and bootstrap the admin key, once, before several workers start."""
    data_dir = config.store.resolved_data_dir()
    db = Database(config.store.url or default_url(data_dir))
    try:
        await db.migrate()
        await bootstrap_admin(KeyStore(db, load_pepper(data_dir)), config, data_dir)
    finally:
        await db.close()


async def bootstrap_admin(keystore: KeyStore, config: ShipyardConfig, data_dir) -> None:
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


