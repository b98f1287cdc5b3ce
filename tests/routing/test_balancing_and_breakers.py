"""Balancers and circuit breakers, exactly (pure parts, an injected clock)."""

from __future__ import annotations

import asyncio
import collections

from shipyard.engines.base import EngineStats
from shipyard.routing.balancer import Balancer
from shipyard.routing.replica import Replica
from shipyard.routing.resilience import CLOSED, HALF_OPEN, OPEN, Backoff, CircuitBreaker


class _Engine:
    def __init__(self, waiting: int = 0):
        self.waiting = waiting

    def ready(self):
        return True

    def stats(self):
        return EngineStats(self.waiting, 0, 0.0, 0, 0)


def _replicas(n: int, **fields) -> list[Replica]:
    return [Replica(f"r{i}", _Engine(), **fields) for i in range(n)]


def test_round_robin_is_even():
    replicas = _replicas(3)
    balancer = Balancer("round_robin")
    counts = collections.Counter(balancer.pick(replicas).name for _ in range(30))
    assert set(counts.values()) == {10}


def test_least_outstanding_avoids_the_busy_one():
    replicas = _replicas(3)
    replicas[0].outstanding = 5
    balancer = Balancer("least_outstanding")
    assert {balancer.pick(replicas).name for _ in range(10)} == {"r1", "r2"}


def test_weighted_follows_the_weights():
    replicas = _replicas(2)
    replicas[0].weight = 3
    balancer = Balancer("weighted")
    counts = collections.Counter(balancer.pick(replicas).name for _ in range(40))
    assert counts == {"r0": 30, "r1": 10}


def test_power_of_two_prefers_the_shorter_reported_queue():
    replicas = _replicas(2)
    replicas[0].engine.waiting = 50
    balancer = Balancer("power_of_two")
    assert {balancer.pick(replicas).name for _ in range(20)} == {"r1"}


def test_breaker_opens_probes_and_closes():
    now = [0.0]
    breaker = CircuitBreaker(failures=3, window_s=10, cooldown_s=5, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
    assert breaker.state == CLOSED and breaker.allows()
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allows()
    now[0] = 5.0
    assert breaker.allows() and breaker.state == HALF_OPEN
    breaker.started()
    assert not breaker.allows()  # one probe at a time
    breaker.failure()
    assert breaker.state == OPEN
    now[0] = 10.0
    assert breaker.allows()
    breaker.started()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allows()


def test_failures_outside_the_window_do_not_count():
    now = [0.0]
    breaker = CircuitBreaker(failures=2, window_s=1, cooldown_s=5, clock=lambda: now[0])
    breaker.failure()
    now[0] = 2.0
    breaker.failure()
    assert breaker.state == CLOSED


def test_backoff_honours_retry_after_and_caps():
    backoff = Backoff(base_s=0.1, max_s=0.5)
    assert all(0 <= backoff.delay(attempt) <= 0.5 for attempt in range(10))
    assert backoff.delay(0, retry_after_s=2.0) == 2.0


class _Startable(_Engine):
    async def start(self):
        await asyncio.sleep(0.05)

    async def stop(self):
        await asyncio.sleep(0.05)


def test_racing_admin_calls_never_duplicate_a_name_or_remove_the_last_replica():
    from shipyard.routing.deployment import DeploymentEngine, RoutingPolicy

    async def scenario():
        deployment = DeploymentEngine("m", [Replica("a", _Startable()), Replica("b", _Startable())],
                                      Balancer("round_robin"), RoutingPolicy())
        added = await asyncio.gather(deployment.add_replica(Replica("c", _Startable())),
                                     deployment.add_replica(Replica("c", _Startable())), return_exceptions=True)
        assert sum(isinstance(r, ValueError) for r in added) == 1
        assert [r.name for r in deployment.replicas] == ["a", "b", "c"]
        removed = await asyncio.gather(*(deployment.remove_replica(n) for n in ("a", "b", "c", "a")),
                                       return_exceptions=True)
        # two go; the third would be the last; the second "a" is gone (404) or on its way out (409)
        assert [r is None for r in removed] == [True, True, False, False]
        assert isinstance(removed[2], ValueError) and isinstance(removed[3], (KeyError, ValueError))
        assert [r.name for r in deployment.replicas] == ["c"]

    asyncio.run(scenario())
