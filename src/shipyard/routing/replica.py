"""One replica of a deployment: an engine (embedded, a worker, vLLM, ...) and what routing
knows of it: its weight and pool, requests in flight through this gateway, its breaker, and
whether it is draining."""

from __future__ import annotations

from dataclasses import dataclass, field

from shipyard.engines.base import Engine
from shipyard.routing.resilience import CircuitBreaker


@dataclass(eq=False)
class Replica:
    name: str
    engine: Engine
    weight: float = 1.0
    min_tier: int = 0  # tier routing: only keys of at least this tier are sent here
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    outstanding: int = 0
    draining: bool = False  # no new requests; those in flight finish

    def available(self) -> bool:
        return not self.draining and self.engine.ready() and self.breaker.allows()

    def load(self) -> float:
        stats = self.engine.stats()
        return stats.num_waiting + stats.num_running + self.outstanding


class ReplicaNameTaken(ValueError):
    """A deployment already has (or is adding, or removing) a replica of this name."""
