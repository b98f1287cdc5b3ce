"""What the Ray Serve controller runs: Shipyard's policy as Ray Serve's autoscaling policy (the
replica itself, a Shipyard worker, is `server/ray_replica.py`).

- `ShipyardRayPolicy`: Ray Serve's custom-policy hook, run by the Serve controller every control
  loop. It turns Ray's figures (requests running and queued over the replicas, replicas running
  and targeted) into the same `Signals` and asks the same `ScalingPolicy` as the local runtime.
  Ray's own delays are set to zero and its target is set explicitly (never Ray Serve LLM's 1e9
  default), so Shipyard's windows and rate limits are the only ones. Each decision, with its
  reasons, is kept in Ray's key-value store for the gateway's autoscaler route.

This module is imported in the Ray controller; the gateway side is `scaling/ray_runtime.py`.
"""

from __future__ import annotations

import json
import logging
import math
import time


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
