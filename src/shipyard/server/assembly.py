"""The FastAPI app around a set of routes, shared by the gateway and the worker: error handlers,
the OpenAPI description, the request guard and the request context (ids, body bounds, access log,
usage rows of refused calls)."""

from __future__ import annotations

import time

from fastapi import FastAPI

from shipyard import __version__
from shipyard.api.errors import install_error_handlers
from shipyard.api.guard import RequestGuard
from shipyard.api.middleware import RequestContextMiddleware
from shipyard.inference.services import Services
from shipyard.api.openapi import install_openapi
from shipyard.config import ShipyardConfig


def assemble(config: ShipyardConfig, services: Services, lifespan, modules) -> FastAPI:
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
