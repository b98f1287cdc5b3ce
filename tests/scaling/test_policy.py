"""The autoscaling policy on an injected clock: bounds, tolerance, windows, rate limits, no
flapping on a noisy steady load, the delay before the last replica goes, starting replicas counted
as capacity; and the simulator's promise on the bursty and diurnal traces."""

from __future__ import annotations

import random

import pytest

from shipyard.scaling.policy import ScalingConfig, ScalingPolicy, Signals
from shipyard.scaling.simulate import DEFAULT_CONFIG, compare


def policy(**settings) -> ScalingPolicy:
    base = {"min_replicas": 1, "max_replicas": 8, "target_queue_per_replica": 4, "scale_down_window_s": 60,
            "scale_down_interval_s": 20, "max_scale_up_step": 2, "scale_to_zero_delay_s": 100}
    return ScalingPolicy(ScalingConfig(**{**base, **settings}))


def test_bounds_and_rate_limits():
    p = policy()
    up = p.decide(0, Signals(running=8, waiting=40, ready=1))
    assert up.desired == 3 and any("limited" in r for r in up.reasons)  # +2 per decision
    assert p.decide(5, Signals(running=40, waiting=400, ready=8)).desired == 8  # max
    quiet = policy()
    assert quiet.decide(0, Signals(running=0, waiting=0, ready=1)).desired == 1  # min
    with pytest.raises(ValueError):
        ScalingConfig(min_replicas=5, max_replicas=2)


def test_tolerance_band_keeps_the_count():
    p = policy(tolerance=0.2)
    decision = p.decide(0, Signals(running=9, waiting=0, ready=2))  # 4.5 per replica: within 20% of 4
    assert decision.desired == 2 and "within" in decision.reasons[0]
    assert policy(tolerance=0.0).decide(0, Signals(running=9, waiting=0, ready=2)).desired == 3


def test_down_is_slow_one_at_a_time_and_after_the_window():
    p = policy()
    for t in range(0, 60, 5):  # busy for a minute at 6 replicas' worth
        p.decide(t, Signals(running=24, waiting=0, ready=6))
    assert p.decide(65, Signals(running=0, waiting=0, ready=6)).desired == 6  # the window remembers the load
    now, replicas, seen = 65, 6, []
    while replicas > 1 and now < 1000:
        now += 5
        decision = p.decide(now, Signals(running=1, waiting=0, ready=replicas))
        assert decision.desired >= replicas - 1  # one at a time
        if decision.desired < replicas:
            seen.append(now)
        replicas = decision.desired
    assert replicas == 1 and all(b - a >= 20 for a, b in zip(seen, seen[1:]))  # the interval between downs
    assert seen[0] >= 60 + 60  # not before the window has forgotten the busy minute


def test_no_flapping_on_a_noisy_steady_load():
    p = policy(tolerance=0.15)
    rng = random.Random(3)
    replicas, changes = 4, 0
    for t in range(0, 3600, 5):
        load = max(0, round(rng.gauss(16, 2)))  # 4 replicas' worth, ±12%
        decision = p.decide(t, Signals(running=min(load, replicas * 4), waiting=max(0, load - replicas * 4),
                                       ready=replicas))
        changes += decision.desired != replicas
        replicas = decision.desired
    assert changes <= 4, changes


def test_starting_replicas_count_as_capacity():
    p = policy(max_scale_up_step=4)
    assert p.decide(0, Signals(running=4, waiting=12, ready=1)).desired == 4
    # three are starting; the queue grew meanwhile, but not past twice the capacity: no new starts
    held = p.decide(5, Signals(running=4, waiting=20, ready=1, starting=3))
    assert held.desired == 4 and any("starting" in r for r in held.reasons)


def test_the_last_replica_waits_out_its_delay():
    p = policy(min_replicas=0, scale_to_zero_delay_s=100, scale_down_window_s=0, scale_down_interval_s=0)
    assert p.decide(0, Signals(running=1, waiting=0, ready=1)).desired == 1
    assert p.decide(50, Signals(running=0, waiting=0, ready=1)).desired == 1
    assert p.decide(99, Signals(running=0, waiting=0, ready=1)).desired == 1
    assert p.decide(101, Signals(running=0, waiting=0, ready=1)).desired == 0
    assert p.decide(102, Signals(running=0, waiting=0, ready=0)).desired == 0
    assert p.decide(103, Signals(running=0, waiting=3, ready=0)).desired == 1  # from zero on demand


def test_latency_guardrail_only_adds():
    p = policy(latency_slo_s=1.0)
    assert p.decide(0, Signals(running=8, waiting=1, ready=3, p95_latency_s=2.0)).desired == 4
    assert p.decide(5, Signals(running=8, waiting=0, ready=4, p95_latency_s=0.1)).desired == 4  # not down on latency


SIMULATED = DEFAULT_CONFIG


@pytest.mark.parametrize("trace", ["bursty", "diurnal"])
def test_simulation_keeps_the_sla_with_far_fewer_replica_seconds(trace):
    result = compare(trace, SIMULATED)
    assert result["sla_attainment"] >= 0.99, result
    assert result["replica_seconds_vs_static_peak"] <= 0.60, result
    assert result["static_peak"]["sla_attainment"] >= 0.99  # the baseline really is peak provisioning


def test_the_cli_prints_the_table_and_refuses_unknown_traces():
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "shipyard", "scaling", "simulate", "--trace", "diurnal", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["diurnal"]["sla_attainment"] >= 0.99
    assert subprocess.run([sys.executable, "-m", "shipyard", "scaling", "simulate", "--trace", "nope"],
                          capture_output=True, text=True, timeout=300).returncode == 2


class _ReadyEngine:
    def ready(self) -> bool:
        return True

    def stats(self):
        from shipyard.engines.base import EngineStats

        return EngineStats(0, 0, 0.2, 8, 8)


async def test_the_local_autoscaler_feeds_latency_and_gpu_to_the_policy():
    from types import SimpleNamespace

    from shipyard.config import AutoscalingConfig
    from shipyard.routing.replica import Replica
    from shipyard.scaling.local import LocalAutoscaler

    deployment = SimpleNamespace(name="d", replicas=[Replica("d-0", _ReadyEngine())], requests_started=0,
                                 cold_start=None)
    settings = AutoscalingConfig(min_replicas=1, max_replicas=1, latency_slo_s=1.0,
                                 replica={"engine": "launch", "kind": "worker", "model": "/m"})
    queue = SimpleNamespace(waiting=3)
    slow = LocalAutoscaler(deployment, settings, queue, p95_latency=lambda: 2.5, gpu_utilization=lambda: None)
    decision = await slow.step()
    assert any("p95 2.50s over the SLA" in r for r in decision.reasons) and decision.desired == 1  # max 1
    busy = LocalAutoscaler(deployment, settings, queue, p95_latency=lambda: None, gpu_utilization=lambda: 0.995)
    assert any("GPU 100% busy with a queue" in r for r in (await busy.step()).reasons)
    idle_gpu = LocalAutoscaler(deployment, settings, SimpleNamespace(waiting=0), gpu_utilization=lambda: 0.995)
    assert not any("GPU" in r for r in (await idle_gpu.step()).reasons)  # a full GPU alone is not load
