"""Several server processes on one listening socket (`shipyard serve --workers N`).

One Python process serves one core's worth of requests; `--workers N` runs N of them behind the
same port, each a whole gateway (auth, limits, usage, metrics, routing) with its own engines.
uvicorn's supervisor binds the socket once, starts the processes, restarts one that dies and
stops them all on SIGTERM; each process builds its app from the same configuration (passed in
the environment) and drains like a single server does.

What must hold across processes, and how:
- Limits are exact only through Redis (`gateway.redis_url`): with auth on, several workers
  without it are refused at start, since each would keep its own counts.
- Keys: revocations reach every worker through Redis's key generations.
- Usage: each process has its own spool file; a new process adopts the spools of dead ones.
- Metrics: counters and histograms go through prometheus-client's multiprocess mode, so any
  worker's /metrics shows the sum over all of them.
- The schema is migrated and the admin key bootstrapped once, by the parent, before any worker
  starts (two processes migrating one database at once would race).
- Launched replicas (child engine servers) belong to one supervising process: refused here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

import uvicorn
from uvicorn.supervisors import multiprocess
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from shipyard.config import ShipyardConfig

CONFIG_ENV = "SHIPYARD_SERVER_CONFIG"
_current_app = None


def check_workers(config: ShipyardConfig, workers: int) -> None:
    """Refuse, with the reason, a configuration that several processes would serve wrongly."""
    from shipyard.engines.launch import LaunchConfig

    if workers < 2:
        return
    launched = [name for name, deployment in config.deployments.items()
                if any(isinstance(replica, LaunchConfig) for replica in getattr(deployment, "replicas", None) or [])
                or getattr(getattr(deployment, "autoscaling", None), "runtime", None) == "local"]
    if launched:
        raise SystemExit(f"--workers {workers}: deployment(s) {', '.join(launched)} launch engine servers, which "
                             "one process must supervise; serve with one worker, or attach to them by URL.")
    redis_url = config.gateway.redis_url or os.environ.get("SHIPYARD_REDIS_URL")
    if config.auth == "enabled" and not redis_url:
        raise SystemExit(f"--workers {workers} needs gateway.redis_url (or SHIPYARD_REDIS_URL): rate limits, "
                             "concurrency caps and budgets are exact across processes only through Redis.")


def worker_app():
    """The app factory each worker process calls (uvicorn imports it by name)."""
    global _current_app
    from shipyard.server.process import TimedHttpProtocol
    from shipyard.server.app import build_app
    from shipyard.monitor.logs import configure_logging

    config = ShipyardConfig.model_validate_json(os.environ[CONFIG_ENV])
    configure_logging(config.server.log_format, config.server.log_level)
    TimedHttpProtocol.header_timeout_s = config.server.header_timeout_s  # this process's class
    _current_app = build_app(config)
    return _current_app


class _WorkerProcess(Process):
    """uvicorn's worker process, running our draining server."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            from shipyard.server.process import DrainingServer

            grace = ShipyardConfig.model_validate_json(os.environ[CONFIG_ENV]).server.shutdown_grace_s
            self._server = DrainingServer(self.config, lambda: _current_app.state.services.drain, grace)
        return self._server


def serve_workers(config: ShipyardConfig, workers: int) -> None:
    from shipyard.server.process import DenyingWebSocketProtocol, TimedHttpProtocol, loop_factory
    from shipyard.server.app import WORKER_PROCESS_ENV, bootstrap_store

    check_workers(config, workers)
    asyncio.run(bootstrap_store(config))  # once, before any worker
    server = config.server
    metrics_dir = tempfile.mkdtemp(prefix="shipyard-metrics-")
    os.environ.update({CONFIG_ENV: config.model_dump_json(), WORKER_PROCESS_ENV: "1",
                       "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
    loop = "asyncio" if loop_factory(server.event_loop) is asyncio.new_event_loop else "uvloop"
    uv_config = uvicorn.Config(
        "shipyard.server.workers:worker_app", factory=True, workers=workers, host=server.host, port=server.port,
        log_config=None, log_level=server.log_level, loop=loop,
        http=f"{TimedHttpProtocol.__module__}:{TimedHttpProtocol.__qualname__}",
        ws=f"{DenyingWebSocketProtocol.__module__}:{DenyingWebSocketProtocol.__qualname__}",
        ws_max_size=server.max_body_bytes, ws_max_queue=4, timeout_keep_alive=max(1, round(server.keep_alive_s)),
        timeout_graceful_shutdown=int(server.shutdown_grace_s) + 5,
        timeout_worker_healthcheck=30)  # a fresh worker imports torch and friends: seconds here
    multiprocess.Process = _WorkerProcess  # the class uvicorn's supervisor starts (and restarts)
    try:
        Multiprocess(uv_config, sockets=[uv_config.bind_socket()]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
