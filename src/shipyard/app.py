"""Builds the ASGI app from config: engines → router → api, plus metrics and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from shipyard import __version__
from shipyard.api import ops_routes, openai_routes, websocket
from shipyard.api.errors import install_error_handlers
from shipyard.api.middleware import RequestContextMiddleware
from shipyard.api.openai_routes import Services
from shipyard.config import ShipyardConfig
from shipyard.engines.base import Engine
from shipyard.engines.transformers_engine import TransformersEngine
from shipyard.monitor.metrics import ServingMetrics
from shipyard.routing.router import Router

log = logging.getLogger("shipyard.app")


def build_engines(config: ShipyardConfig) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for name, deployment in config.deployments.items():
        if deployment.engine == "transformers":
            engines[name] = TransformersEngine(deployment, model_id=name)
    return engines


def build_app(config: ShipyardConfig, engines: dict[str, Engine] | None = None) -> FastAPI:
    router = Router(engines if engines is not None else build_engines(config))
    metrics = ServingMetrics(router.engines)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Load models in the background: /health answers at once, /ready says 503 until loaded.
        loading = asyncio.create_task(router.start())
        loading.add_done_callback(_report_load_failure)
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
            await router.stop()

    app = FastAPI(
        title="Shipyard",
        version=__version__,
        description="OpenAI-compatible inference server.",
        lifespan=lifespan,
    )
    app.state.services = Services(router=router, metrics=metrics)
    app.state.config = config
    install_error_handlers(app, config.server.retry_after_s)
    app.include_router(openai_routes.router)
    app.include_router(websocket.router)
    app.include_router(ops_routes.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=config.server.max_body_bytes)
    return app


def _report_load_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loading models failed: %s", task.exception(), exc_info=task.exception())
