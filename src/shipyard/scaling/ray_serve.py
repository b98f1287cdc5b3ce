"""What runs inside the Ray cluster: the engine replica as a Ray Serve deployment, and Shipyard's
policy as Ray Serve's autoscaling policy.

- `ShipyardReplica`: one replica is a Shipyard worker (the embedded engine behind the OpenAI routes,
  every route but /health and /ready behind the gateway's internal token), served through Ray
  Serve's HTTP proxy as an ASGI app. Ray places it by resources (`num_cpus`, `num_gpus`, custom
  ones), restarts it when it dies, and routes among replicas by their queues.
- `ShipyardRayPolicy`: Ray Serve's custom-policy hook, run by the Serve controller every control
  loop. It turns Ray's figures (requests running and queued over the replicas, replicas running
  and targeted) into the same `Signals` and asks the same `ScalingPolicy` as the local runtime.
  Ray's own delays are set to zero and its target is set explicitly (never Ray Serve LLM's 1e9
  default), so Shipyard's windows and rate limits are the only ones. Each decision, with its
  reasons, is kept in Ray's key-value store for the gateway's autoscaler route.

This module is imported in the Ray processes; the gateway side is `scaling/ray_runtime.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

from ray import serve

from shipyard.scaling.policy import ScalingConfig, ScalingPolicy, Signals

log = logging.getLogger("shipyard.scaling.ray")
DECISIONS_KEY = "shipyard:autoscaler:{app}"  # Ray internal KV: the latest decisions, JSON
KV_NAMESPACE = "shipyard"
KEPT = 50


class ShipyardRayPolicy:
    """Instantiated once per deployment by the Serve controller (`policy_kwargs`: the settings)."""

    def __init__(self, app: str, **settings):
        self.app = app
        self.policy = ScalingPolicy(ScalingConfig(**settings))
        self.decisions: list[dict] = []
        self.scale_events = 0

    def __call__(self, ctx) -> tuple[int, dict]:
        total = float(ctx.total_num_requests or 0.0)  # running + queued, over the replicas and handles
        queued = float(ctx.total_queued_requests or 0.0)
        ready, target = ctx.current_num_replicas, ctx.target_num_replicas
        load = math.ceil(total - 1e-9)  # Ray averages over its look-back window: a part of a request is one
        waiting = min(load, math.ceil(queued - 1e-9))
        signals = Signals(running=load - waiting, waiting=waiting, ready=ready, starting=max(0, target - ready))
        now = ctx.current_time if ctx.current_time is not None else time.time()
        decision = self.policy.decide(now, signals)
        if decision.change:
            self.scale_events += 1
            log.info("shipyard policy %s: %d → %d replicas (%s)", self.app, decision.current, decision.desired,
                     "; ".join(decision.reasons))
        # The controller asks ten times a second: keep every change, and otherwise one look a second.
        if decision.change or not self.decisions or decision.at - self.decisions[-1]["at"] >= 1.0:
            self.decisions = [*self.decisions[-(KEPT - 1):], {
                "at": decision.at, "current": decision.current, "desired": decision.desired,
                "reasons": decision.reasons, "running": signals.running, "waiting": signals.waiting}]
            self._publish()
        return decision.desired, dict(ctx.policy_state)

    def _publish(self) -> None:
        try:  # the controller is a Ray worker: its key-value store is the cluster's
            from ray.experimental import internal_kv

            internal_kv._internal_kv_put(DECISIONS_KEY.format(app=self.app),
                                         json.dumps({"scale_events": self.scale_events,
                                                     "decisions": self.decisions}).encode(),
                                         overwrite=True, namespace=KV_NAMESPACE)
        except Exception:  # a view, never a reason to stop scaling
            log.exception("could not publish the autoscaler's decisions")


def read_decisions(app: str) -> dict:
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(DECISIONS_KEY.format(app=app), namespace=KV_NAMESPACE)
    return json.loads(raw) if raw else {"scale_events": 0, "decisions": []}


@serve.ingress()
class ShipyardReplica:
    """The worker app is built inside the replica (after Ray placed it), its model loaded first:
    Ray sends a replica requests once this returns, so a replacement never answers "not loaded"."""

    def __init__(self, served_name: str, model: str, num_threads: int, token: str):
        self.served_name, self.model, self.num_threads, self.token = served_name, model, num_threads, token

    async def __serve_build_asgi_app__(self):
        from shipyard.app import build_engines, build_worker_app
        from shipyard.config import ShipyardConfig

        config = ShipyardConfig().with_model(self.model, self.served_name)
        config = config.model_copy(update={"deployments": {
            name: d.model_copy(update={"num_threads": self.num_threads}) for name, d in config.deployments.items()}})
        engines = build_engines(config)
        await asyncio.gather(*(engine.start() for engine in engines.values()))
        return build_worker_app(config, self.token, engines, started=True)


def application(name: str, model: str, num_threads: int, token: str, scaling: dict, ray_options: dict):
    """The Ray Serve application for one Shipyard deployment, with Shipyard's policy driving it."""
    autoscaling = {
        "min_replicas": scaling["min_replicas"], "max_replicas": scaling["max_replicas"],
        "initial_replicas": max(1, scaling["min_replicas"]),
        # Set explicitly, as Ray's own rule's target; Shipyard's policy decides with the same number.
        "target_ongoing_requests": scaling["target_queue_per_replica"],
        "upscale_delay_s": 0.0, "downscale_delay_s": 0.0, "downscale_to_zero_delay_s": 0.0,
        "look_back_period_s": ray_options["look_back_period_s"],
        "policy": {"policy_function": ShipyardRayPolicy, "policy_kwargs": {"app": name, **scaling}},
    }
    deployment = serve.deployment(ShipyardReplica).options(
        name=f"{name}-engine", autoscaling_config=autoscaling,
        max_ongoing_requests=ray_options["max_ongoing_requests"],
        max_queued_requests=ray_options["max_queued_requests"],
        health_check_period_s=ray_options["health_check_period_s"],
        graceful_shutdown_timeout_s=ray_options["graceful_shutdown_timeout_s"],
        ray_actor_options={"num_cpus": ray_options["num_cpus"], "num_gpus": ray_options["num_gpus"],
                           "resources": ray_options["resources"]})
    return deployment.bind(name, model, num_threads, token)
