"""Which replica takes the next request, chosen per deployment.

- `round_robin`: in turn.
- `least_outstanding`: the fewest requests this gateway has in flight there (ties in turn).
- `weighted`: smooth weighted round-robin (nginx's), in proportion to each replica's weight.
- `power_of_two`: two at random, the one with the shorter reported queue (waiting + running, from
  the engine's own stats, plus what this gateway has in flight there).
"""

from __future__ import annotations

import itertools
import random
from typing import Literal

from shipyard.routing.replica import Replica

Strategy = Literal["round_robin", "least_outstanding", "weighted", "power_of_two"]


class Balancer:
    def __init__(self, strategy: Strategy):
        self.strategy = strategy
        self._turn = itertools.count()
        self._current: dict[str, float] = {}  # smooth weighted round-robin state

    def pick(self, candidates: list[Replica]) -> Replica:
        if len(candidates) == 1:
            return candidates[0]
        turn = next(self._turn)
        if self.strategy == "round_robin":
            return candidates[turn % len(candidates)]
        if self.strategy == "least_outstanding":
            fewest = min(r.outstanding for r in candidates)
            tied = [r for r in candidates if r.outstanding == fewest]
            return tied[turn % len(tied)]
        if self.strategy == "weighted":
            total = sum(r.weight for r in candidates)
            for r in candidates:
                self._current[r.name] = self._current.get(r.name, 0.0) + r.weight
            best = max(candidates, key=lambda r: self._current[r.name])
            self._current[best.name] -= total
            return best
        a, b = random.sample(candidates, 2)
        return a if a.load() <= b.load() else b
