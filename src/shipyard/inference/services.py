"""What the request pipeline and the routes run with: one process's router, metrics, gateway,
stores, hooks and background services, assembled by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shipyard.gateway.keystore import KeyStore
from shipyard.gateway.service import Gateway
from shipyard.hooks import RequestHooks
from shipyard.inference.drain import Drain
from shipyard.monitor.metrics import ServingMetrics
from shipyard.routing.router import Router
from shipyard.store.db import Database


@dataclass
class Services:
    router: Router
    metrics: ServingMetrics
    gateway: Gateway
    keystore: KeyStore | None = None
    db: Database | None = None
    drain: Drain = field(default_factory=Drain)
    max_sequences_per_request: int = 64
    hooks: RequestHooks = field(default_factory=RequestHooks)  # the observers of the request path
    monitor: object = None  # monitor.service.MonitorService: alerts, SLAs, drift (None: monitoring off)
    text_deployments: frozenset = frozenset()  # deployments whose observers read prompt and answer text
    autoscalers: dict = field(default_factory=dict)  # deployment → scaling.local.LocalAutoscaler
    experiments: object = None  # experiments.registry.ExperimentRegistry: which arm serves a request
    canary: object = None  # experiments.canary.CanaryController: the canaries' latest analyses
    triggers: object = None  # experiments.triggers.RetrainingTriggers
    replays: object = None  # experiments.replay.Replayer: champion-challenger on stored datasets
    api_launch: bool = False  # admins may add `engine: launch` replicas over the API (server.api_launch)
    # the HTTP status a failure is answered with (api/errors.py's mapping, given by the composition
    # root): what a refused request's usage row records
    status_of: Callable[[BaseException], int] = lambda exc: 500
