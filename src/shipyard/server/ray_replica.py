"""The engine replica as a Ray Serve deployment: one replica is a Shipyard worker (the embedded
engine behind the OpenAI routes, every route but /health and /ready behind the gateway's internal
token), served through Ray Serve's HTTP proxy as an ASGI app. Ray places it by resources
(`num_cpus`, `num_gpus`, custom ones), restarts it when it dies, and routes among replicas by their
queues. The composition root hands `application` to the Ray runtime (`scaling/ray_runtime.py`), so
scaling never imports the app; the replica builds the worker app inside Ray."""

from __future__ import annotations

import asyncio

from ray import serve

from shipyard.scaling.ray_serve import ShipyardRayPolicy


@serve.ingress()
class ShipyardReplica:
    """The worker app is built inside the replica (after Ray placed it), its model loaded first:
    Ray sends a replica requests once this returns, so a replacement never answers "not loaded"."""

    def __init__(self, served_name: str, model: str, num_threads: int, token: str):
        self.served_name, self.model, self.num_threads, self.token = served_name, model, num_threads, token

    async def __serve_build_asgi_app__(self):
        from shipyard.config import ShipyardConfig
        from shipyard.server.engines import build_engines
        from shipyard.server.worker_app import build_worker_app

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
