"""`shipyard worker`'s app: the engine(s) behind the OpenAI routes for a gateway in front."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from shipyard.api import openai_routes, ops_routes, tokenize_routes, websocket
from shipyard.inference.services import Services
from shipyard.config import ShipyardConfig
from shipyard.engines.base import Engine
from shipyard.gateway.admission import TieredAdmission
from shipyard.gateway.auth import InternalTokenAuthenticator
from shipyard.gateway.limits import InProcessLimiter
from shipyard.gateway.service import Gateway
from shipyard.monitor.metrics import ServingMetrics
from shipyard.routing.router import Router
from shipyard.server.assembly import assemble
from shipyard.server.engines import build_engines, engines_running


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
        async with engines_running(router):
            yield

    services = Services(router=router, metrics=metrics, gateway=gateway,
                        max_sequences_per_request=config.server.max_sequences_per_request)
    return assemble(config, services, lifespan, (openai_routes, tokenize_routes, websocket, ops_routes))
