"""The Ray runtime, gateway side: a deployment's replicas run as a Ray Serve application on a Ray
cluster (`runtime: ray`, or `shipyard serve --runtime ray --ray-address HOST:PORT`).

At start the gateway connects to the cluster as a Ray driver, deploys the application
(`server/ray_replica.py`: the worker replicas; `scaling/ray_serve.py`: Shipyard's policy as Ray's
autoscaling policy) and
waits until it runs; then Ray Serve's HTTP proxy joins the deployment's routing pool as one
`openai_http` replica, so every gateway layer (keys, limits, caches, metering, fallbacks) stays in
front. Ray places the replicas by resources, replaces one that dies, and routes among them by
their queues; Shipyard's policy, in Ray's controller, decides how many there are. The decisions,
with their reasons, come back through Ray's key-value store for the autoscaler route.

The replicas' internal token is derived from the gateway's pepper, so every gateway process (and
every restart) deploys the same application and Ray has nothing to roll.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time

from shipyard.aio import cancel_and_wait
from shipyard.engines.upstream import OpenAIHTTPEngine, OpenAIHTTPEngineConfig
from shipyard.routing.replica import Replica
from shipyard.scaling.cold_start import ColdStartBuffer
from shipyard.scaling.policy import Decision, ScalingConfig

log = logging.getLogger("shipyard.scaling.ray")
REFRESH_S = 2.0  # how often the application's status and the decisions are read from the cluster


def replica_token(pepper: bytes, deployment: str) -> str:
    return hmac.new(pepper, f"ray-replica:{deployment}".encode(), hashlib.sha256).hexdigest()


class RayServeAutoscaler:
    def __init__(self, deployment, settings, token: str, application):
        self.deployment = deployment  # routing.deployment.DeploymentEngine
        self.settings = settings  # config.AutoscalingConfig with runtime: ray
        self.token = token
        # (name, model, threads, token, scaling, ray options) → the Ray Serve application: given by the
        # composition root (server/ray_replica.py), so scaling never imports the app it builds
        self.application = application
        self.buffer: ColdStartBuffer | None = None
        self._status: dict = {"status": None, "replica_states": {}}
        self._decisions: dict = {"scale_events": 0, "decisions": []}
        self._refresher: asyncio.Task | None = None

    @property
    def app_name(self) -> str:
        return self.deployment.name

    @property
    def proxy_url(self) -> str:
        ray = self.settings.ray
        return f"http://{ray.proxy_host}:{ray.proxy_port}/{self.app_name}"

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await asyncio.to_thread(self._deploy)
        engine = OpenAIHTTPEngine(OpenAIHTTPEngineConfig(
            url=self.proxy_url, flavor="shipyard", upstream_model=self.app_name,
            first_token_timeout_s=self.settings.replica.first_token_timeout_s,
            idle_timeout_s=self.settings.replica.idle_timeout_s, poll_interval_s=1.0),
            self.app_name, api_key=self.token)
        await self.deployment.add_replica(Replica(f"{self.app_name}-ray", engine))
        # While Ray replaces a replica that died (the proxy's health check fails meanwhile), requests
        # are held, not refused: the same bounded buffer as a cold start, with nothing to wake.
        deployment = self.deployment
        self.buffer = ColdStartBuffer(deployment.name, self.settings.cold_start_buffer,
                                      self.settings.cold_start_timeout_s,
                                      lambda: any(r.available() for r in deployment.replicas), lambda: None)
        deployment.cold_start = self.buffer
        self._refresher = asyncio.create_task(self._refresh_forever())

    def _deploy(self) -> None:
        import ray
        from ray import serve


        settings, options = self.settings, self.settings.ray
        if not ray.is_initialized():
            ray.init(address=options.address, namespace="shipyard", log_to_driver=False,
                     configure_logging=False)
        serve.start(http_options={"host": options.proxy_host, "port": options.proxy_port},
                    proxy_location="HeadOnly")
        scaling = settings.model_dump(include=set(ScalingConfig.model_fields))
        ray_options = {**options.model_dump(), "graceful_shutdown_timeout_s": settings.drain_timeout_s}
        template = settings.replica
        started = time.monotonic()
        serve.run(self.application(self.app_name, template.model, template.num_threads, self.token, scaling, ray_options),
                  name=self.app_name, route_prefix=f"/{self.app_name}")
        log.info("ray: application %s running at %s after %.1f s", self.app_name, self.proxy_url,
                 time.monotonic() - started)

    async def stop(self) -> None:
        await cancel_and_wait(self._refresher)
        if not self.settings.ray.delete_on_stop:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self._delete), self.settings.drain_timeout_s + 30)
        except Exception as exc:  # the gateway still stops; the application is left to Ray
            log.warning("ray: application %s not deleted: %s", self.app_name, exc)

    def _delete(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.delete(self.app_name)

    # ---------------------------------------------------------------- views
    async def _refresh_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._refresh)
            except Exception as exc:  # the cluster is away: the last figures stay, marked by the log
                log.warning("ray: status of %s unavailable: %s", self.app_name, exc)
            await asyncio.sleep(REFRESH_S)

    def _refresh(self) -> None:
        """The application's status and the policy's decisions, from the cluster (blocking calls)."""
        from ray import serve

        from shipyard.scaling.ray_serve import read_decisions

        app = serve.status().applications.get(self.app_name)
        status = {"status": None, "replica_states": {}}
        if app is not None:
            status["status"] = str(getattr(app.status, "value", app.status))
            for overview in app.deployments.values():
                status["replica_states"] = {str(getattr(k, "value", k)): n for k, n in overview.replica_states.items()}
        self._decisions = read_decisions(self.app_name)
        self._status = status

    @property
    def scale_events(self) -> int:
        return int(self._decisions.get("scale_events", 0))

    @property
    def decisions(self) -> list[Decision]:
        return [Decision(d["at"], d["current"], d["desired"], d["reasons"]) for d in self._decisions["decisions"]]

    def current_replicas(self) -> int:
        """Running and starting replicas, as Ray last reported them."""
        states = self._status["replica_states"]
        return sum(n for state, n in states.items() if state in ("RUNNING", "STARTING", "UPDATING", "RECOVERING"))

    async def view(self) -> dict:
        await asyncio.to_thread(self._refresh)
        states = self._status["replica_states"]
        return {"deployment": self.app_name, "runtime": "ray", "settings": self.settings.model_dump(mode="json"),
                "ray": {"address": self.settings.ray.address, "proxy": self.proxy_url, **self._status},
                "replicas": [f"{self.app_name}-engine#{i + 1}" for i in range(states.get("RUNNING", 0))],
                "starting": [f"starting#{i + 1}" for i in range(states.get("STARTING", 0))], "draining": [],
                "held": None if self.buffer is None else {"waiting": self.buffer.waiting, "served": self.buffer.served,
                                                          "rejected": self.buffer.rejected},
                "scale_events": self.scale_events, "decisions": self._decisions["decisions"]}


