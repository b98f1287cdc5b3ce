"""The autoscaling policy: how many replicas a deployment should have now. Pure and clock-driven
(every decision takes the time it is made at), so it is simulated and tested exactly, and the
same object drives the local runtime, Ray Serve and the simulator.

Signals, per deployment:
- queue depth per replica (running + waiting), against a per-replica target: the primary signal;
- P95 latency against the SLA: a scale-up guardrail only (latency alone never scales down);
- KV-cache usage and GPU utilization: secondary, up only. GPU utilization is near 100% whenever a
  batch runs, so it only counts above a high mark and never alone scales down.

desired = the largest of the signals' wishes, clamped to [min, max]. Then:
- a tolerance band around the target: small deviations change nothing;
- stabilisation windows, asymmetric: up takes the lowest wish of a short window (fast), down the
  highest wish of a long one (slow), so a noisy steady load does not flap;
- rate limits: at most `max_scale_up_step` more replicas per decision; down one at a time, at most
  once per `scale_down_interval_s`;
- the last replica goes only after `scale_to_zero_delay_s` without a request;
- replicas still starting count as capacity, so a slow start is not answered with more starts.
Every decision carries its reasons.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScalingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    min_replicas: int = Field(1, ge=0, description="0: scale to zero when idle (development / staging)")
    max_replicas: int = Field(4, ge=1)
    target_queue_per_replica: float = Field(4.0, gt=0, description="running + waiting requests per replica")
    tolerance: float = Field(0.1, ge=0, lt=1, description="relative deviation from the target that is ignored")
    latency_slo_s: float | None = Field(None, gt=0, description="P95 latency above this adds a replica")
    kv_cache_high: float = Field(0.9, gt=0, le=1, description="KV-cache usage above this adds a replica")
    gpu_util_high: float = Field(0.98, gt=0, le=1, description="GPU utilization above this adds a replica "
                                                               "(only together with a queue)")
    scale_up_window_s: float = Field(0.0, ge=0, description="up: the lowest wish over this window")
    scale_down_window_s: float = Field(120.0, ge=0, description="down: the highest wish over this window")
    max_scale_up_step: int = Field(4, ge=1, description="replicas added per decision at most")
    scale_down_interval_s: float = Field(30.0, ge=0, description="one replica removed per this interval at most")
    scale_to_zero_delay_s: float = Field(300.0, ge=0, description="idle time before the last replica goes")

    @model_validator(mode="after")
    def _bounds(self) -> ScalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas is above max_replicas")
        return self


@dataclass
class Signals:
    running: int  # requests being computed, over all replicas
    waiting: int  # requests queued (in the engines and in the gateway's buffer)
    ready: int  # replicas serving
    starting: int = 0  # replicas launched, not ready yet
    p95_latency_s: float | None = None
    kv_cache_usage: float | None = None  # the busiest replica's, 0..1
    gpu_utilization: float | None = None  # the busiest replica's, 0..1
    arrived: int = 0  # requests started since the previous decision (short ones a look can miss)


@dataclass
class Decision:
    at: float
    current: int  # ready + starting
    desired: int
    reasons: list[str]

    @property
    def change(self) -> int:
        return self.desired - self.current


@dataclass
class ScalingPolicy:
    config: ScalingConfig
    _wishes: deque = field(default_factory=deque)  # (time, wish) over the longest window
    _last_down: float = -math.inf
    _last_busy: float | None = None  # when a request was last seen (running or waiting)

    def wish(self, signals: Signals) -> tuple[int, list[str]]:
        """What the signals alone ask for, with the reasons (before windows and rate limits)."""
        c = self.config
        capacity = signals.ready + signals.starting
        load = signals.running + signals.waiting
        reasons = []
        if load == 0:
            wish = 0
            reasons.append("no requests")
        else:
            exact = load / c.target_queue_per_replica
            if capacity and abs(exact / capacity - 1) <= c.tolerance:
                wish = capacity
                reasons.append(f"queue {load / capacity:.1f}/replica within {c.tolerance:.0%} of the target")
            else:
                wish = math.ceil(exact - 1e-9)
                reasons.append(f"queue {load} → {wish} replica(s) at {c.target_queue_per_replica:g} each")
        if c.latency_slo_s is not None and signals.p95_latency_s is not None and \
                signals.p95_latency_s > c.latency_slo_s and signals.waiting > 0 and wish <= capacity:
            wish = capacity + 1
            reasons.append(f"p95 {signals.p95_latency_s:.2f}s over the SLA {c.latency_slo_s:g}s with a queue")
        if signals.kv_cache_usage is not None and signals.kv_cache_usage > c.kv_cache_high and wish <= capacity:
            wish = capacity + 1
            reasons.append(f"KV cache {signals.kv_cache_usage:.0%} over {c.kv_cache_high:.0%}")
        if signals.gpu_utilization is not None and signals.gpu_utilization > c.gpu_util_high and \
                signals.waiting > 0 and wish <= capacity:
            wish = capacity + 1
            reasons.append(f"GPU {signals.gpu_utilization:.0%} busy with a queue")
        return wish, reasons

    def decide(self, now: float, signals: Signals) -> Decision:
        c = self.config
        current = signals.ready + signals.starting
        wish, reasons = self.wish(signals)
        if signals.running + signals.waiting + signals.arrived > 0 or self._last_busy is None:
            self._last_busy = now
        self._wishes.append((now, wish))
        horizon = max(c.scale_up_window_s, c.scale_down_window_s)
        while self._wishes and self._wishes[0][0] < now - horizon:
            self._wishes.popleft()
        up = min(w for t, w in self._wishes if t >= now - c.scale_up_window_s)
        down = max(w for t, w in self._wishes if t >= now - c.scale_down_window_s)
        floor = c.min_replicas
        if floor == 0 and (now - self._last_busy) < c.scale_to_zero_delay_s:
            floor = 1  # the last replica waits out its delay
            if current == 1 and wish == 0:
                reasons.append(f"idle {now - self._last_busy:.0f}s of {c.scale_to_zero_delay_s:g}s before zero")
        if up > current and signals.starting and up <= current * 2:
            # Replicas are starting: they were asked for by an earlier, smaller queue. The queue that
            # built while they start is theirs to drain; another start now would overshoot.
            target = current
            reasons.append(f"{signals.starting} replica(s) still starting: counted as capacity")
        elif up > current:
            target = min(up, current + c.max_scale_up_step, c.max_replicas)
            if target < up:
                reasons.append(f"up limited to +{target - current} (step {c.max_scale_up_step}, max {c.max_replicas})")
        elif down < current:
            target = max(down, current - 1, floor)
            if target < current and now - self._last_down < c.scale_down_interval_s:
                reasons.append(f"down held: last one {now - self._last_down:.0f}s ago")
                target = current
            elif target < current:
                self._last_down = now
                reasons.append(f"down one (highest wish over {c.scale_down_window_s:g}s: {down})")
        else:
            target = current
        target = max(min(target, c.max_replicas), c.min_replicas)
        if current >= 1:
            target = max(target, floor)  # a running deployment keeps its last replica through the delay
        return Decision(now, current, target, reasons)
