"""Replaying traffic through the real policy core, with modelled replicas.

A replica starts `cold_start_s` after it is launched, then computes up to `max_batch` requests at
once with continuous batching: up to `knee` of them each progress at full speed, above it they
share the replica's throughput (processor sharing). A request needs `service_s` of full-speed
time. Requests wait in one queue (the gateway's buffer and the engines' queues); past `max_queue`
they are shed. A replica scaled down is drained: it takes no new requests and is gone when its
last one finishes. A request meets the SLA when its latency is at most `sla_s`; a shed one never
does.

Traces (arrival times, seeded): step, spike, diurnal (one compressed day), bursty (Gamma
inter-arrival times with a coefficient of variation of 8). Each is also run with a static replica
count at the minimum and at the peak, for comparison.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from shipyard.scaling.policy import ScalingConfig, ScalingPolicy, Signals

TRACES = ("step", "spike", "diurnal", "bursty")


@dataclass
class Model:
    service_s: float = 1.0  # full-speed time of one request
    knee: int = 8  # requests a replica computes at full speed
    max_batch: int = 32
    cold_start_s: float = 20.0
    sla_s: float = 4.0
    max_queue: int = 2000
    dt: float = 0.2
    decision_interval_s: float = 5.0


def trace(name: str, seed: int = 0) -> tuple[list[float], float]:
    """(arrival times, duration) of a named trace."""
    rng = random.Random(seed)

    def poisson(rate_of, duration: float, peak: float) -> list[float]:  # thinning
        times, t = [], 0.0
        while True:
            t += rng.expovariate(peak)
            if t >= duration:
                return times
            if rng.random() < rate_of(t) / peak:
                times.append(t)

    if name == "step":
        duration = 900.0
        return poisson(lambda t: 40.0 if 120 <= t < 600 else 4.0, duration, 40.0), duration
    if name == "spike":
        duration = 900.0
        return poisson(lambda t: 60.0 if 300 <= t < 330 else 6.0, duration, 60.0), duration
    if name == "diurnal":
        duration = 3600.0  # one day, compressed: night 2 req/s, midday 40 req/s
        return poisson(lambda t: 2.0 + 38.0 * (1 - math.cos(2 * math.pi * t / duration)) / 2, duration, 40.0), duration
    if name == "bursty":
        duration, mean_rate, cv = 3600.0, 6.0, 8.0
        shape = 1 / cv ** 2
        scale = 1 / (mean_rate * shape)
        times, t = [], 0.0
        while True:
            t += rng.gammavariate(shape, scale)
            if t >= duration:
                return times, duration
            times.append(t)
    raise ValueError(f"unknown trace {name!r}: one of {', '.join(TRACES)}")


@dataclass
class _Replica:
    ready_at: float
    active: list = field(default_factory=list)  # [arrival, work left]
    draining: bool = False


def peak_replicas(arrivals: list[float], model: Model, window_s: float = 1.0) -> int:
    """Static peak provisioning: enough replicas to keep every one at its knee in the busiest second."""
    counts: dict[int, int] = {}
    for t in arrivals:
        counts[int(t // window_s)] = counts.get(int(t // window_s), 0) + 1
    peak_rate = max(counts.values(), default=0) / window_s
    return max(1, math.ceil(peak_rate * model.service_s / model.knee))


def run(arrivals: list[float], duration: float, model: Model, config: ScalingConfig | None = None,
        static: int | None = None) -> dict:
    """One replay: the policy's (or a static count's) SLA attainment, replica-seconds, scale-up
    time, scale events and shed requests."""
    policy = ScalingPolicy(config) if config is not None else None
    start = static if static is not None else max(config.min_replicas, 1)
    replicas = [_Replica(0.0) for _ in range(start)]
    queue: list[float] = []
    latencies: list[float] = []
    shed = good = 0
    replica_seconds = 0.0
    events = 0
    overload_since: float | None = None
    scale_up_times: list[float] = []
    next_arrival, next_decision, now = 0, 0.0, 0.0
    end = duration + 120.0  # drain what is left
    while now < end:
        while next_arrival < len(arrivals) and arrivals[next_arrival] <= now:
            if len(queue) >= model.max_queue:
                shed += 1
            else:
                queue.append(arrivals[next_arrival])
            next_arrival += 1
        serving = [r for r in replicas if r.ready_at <= now and not r.draining]
        while queue and serving:  # each to the least busy replica (the balancer's least-outstanding)
            replica = min(serving, key=lambda r: len(r.active))
            if len(replica.active) >= model.max_batch:
                break
            replica.active.append([queue.pop(0), model.service_s])
        for replica in replicas:
            if replica.ready_at > now or not replica.active:
                continue
            speed = model.dt * min(1.0, model.knee / len(replica.active))
            still = []
            for request in replica.active:
                request[1] -= speed
                if request[1] <= 1e-9:
                    latency = now + model.dt - request[0]
                    latencies.append(latency)
                    good += latency <= model.sla_s
                else:
                    still.append(request)
            replica.active = still
        replicas = [r for r in replicas if not (r.draining and not r.active)]
        replica_seconds += len(replicas) * model.dt
        ready = [r for r in replicas if r.ready_at <= now and not r.draining]
        load = sum(len(r.active) for r in ready) + len(queue)
        overloaded = load > max(len(ready), 0) * model.knee
        if overloaded and overload_since is None:
            overload_since = now
        elif not overloaded:
            overload_since = None
        if policy is not None and now >= next_decision:
            next_decision = now + model.decision_interval_s
            starting = [r for r in replicas if r.ready_at > now]
            signals = Signals(running=sum(len(r.active) for r in ready), waiting=len(queue), ready=len(ready),
                              starting=len(starting))
            decision = policy.decide(now, signals)
            if decision.change > 0:
                replicas += [_Replica(now + model.cold_start_s) for _ in range(decision.change)]
                events += 1
                if overload_since is not None:  # reaction time: load past capacity → added capacity ready
                    scale_up_times.append(now + model.cold_start_s - overload_since)
                    overload_since = None
            elif decision.change < 0:
                for _ in range(-decision.change):
                    victim = starting.pop() if starting else min(ready, key=lambda r: len(r.active), default=None)
                    if victim is None:
                        break
                    if victim in ready:
                        ready.remove(victim)
                    victim.draining = True
                    if victim.ready_at > now:
                        victim.active = []  # never started: gone at once
                events += 1
        now += model.dt
    total = len(arrivals)
    return {"requests": total, "sla_attainment": good / total if total else 1.0, "replica_seconds": replica_seconds,
            # median seconds from the load passing the ready replicas' capacity to the first replica
            # added for it being ready (decision delay + cold start); None when it never scaled up
            "time_to_scale_up_s": sorted(scale_up_times)[len(scale_up_times) // 2] if scale_up_times else None,
            "scale_events": events, "shed": shed,
            "p95_latency_s": sorted(latencies)[int(0.95 * (len(latencies) - 1))] if latencies else 0.0}


# The settings the simulation table and its test use (docs/scaling.md explains the choice).
DEFAULT_CONFIG = ScalingConfig(min_replicas=2, max_replicas=16, target_queue_per_replica=8, scale_down_window_s=180,
                               scale_down_interval_s=30, max_scale_up_step=4)


def compare(name: str, config: ScalingConfig, model: Model | None = None, seed: int = 0) -> dict:
    """The policy against static provisioning at the minimum and at the peak, on one trace."""
    model = model or Model()
    arrivals, duration = trace(name, seed)
    peak = peak_replicas(arrivals, model)
    auto = run(arrivals, duration, model, config)
    low = run(arrivals, duration, model, static=max(config.min_replicas, 1))
    high = run(arrivals, duration, model, static=peak)
    return {**auto, "static_min": {"replicas": max(config.min_replicas, 1), **low},
            "static_peak": {"replicas": peak, **high},
            "replica_seconds_vs_static_peak": auto["replica_seconds"] / high["replica_seconds"],
            "replica_seconds_vs_static_min": auto["replica_seconds"] / low["replica_seconds"]}
