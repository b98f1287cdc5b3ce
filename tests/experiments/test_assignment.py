"""Sticky assignment: the same unit always gets the same arm; the split matches the weights; a
growing canary keeps the units it has; what each status serves; the spec's bounds."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from pydantic import ValidationError

from shipyard.experiments.spec import ExperimentSpec, pick


def spec(**fields) -> ExperimentSpec:
    base = {"name": "rollout", "model": "chat", "mode": "ab",
            "arms": [{"name": "champion", "deployment": "chat", "weight": 3},
                     {"name": "challenger", "deployment": "chat-v2", "weight": 1}]}
    return ExperimentSpec.model_validate({**base, **fields})


def test_the_same_unit_always_gets_the_same_arm_and_the_split_matches_the_weights():
    s = spec()
    weights = s.serving_weights()
    assert all(pick(s, weights, "user:alice") == pick(s, weights, "user:alice") for _ in range(100))
    units = 20_000
    counts = Counter(pick(s, weights, f"user:{i}").name for i in range(units))
    share = counts["challenger"] / units
    assert abs(share - 0.25) <= 4 * math.sqrt(0.25 * 0.75 / units)  # binomial bound
    other = spec(salt="another")  # a new salt reshuffles who goes where
    moved = sum(pick(s, weights, f"user:{i}") != pick(other, weights, f"user:{i}") for i in range(2000))
    assert moved > 500


def test_a_growing_canary_keeps_its_units():
    def canary(share: float) -> ExperimentSpec:
        return spec(mode="canary", arms=[{"name": "champion", "deployment": "chat"},
                                         {"name": "canary", "deployment": "chat-v2", "weight": share}])
    previous: set[int] = set()
    for share in (0.01, 0.05, 0.25, 0.5, 1.0):
        s = canary(share)
        on = {i for i in range(5000) if pick(s, s.serving_weights(), f"key:{i}").name == "canary"}
        assert previous <= on  # nobody goes back to the champion as the canary grows
        assert abs(len(on) / 5000 - share) <= 4 * math.sqrt(share * (1 - share) / 5000) + 1e-9
        previous = on


def test_what_each_mode_and_status_serves():
    assert spec(mode="shadow").serving_weights() == [1.0, 0.0]
    assert spec(mode="champion_challenger").serving_weights() == [1.0, 0.0]
    assert spec(status="promoted", promoted_arm="challenger").serving_weights() == [0.0, 1.0]
    assert spec(status="rolled_back").serving_weights() == [1.0, 0.0]
    assert spec(status="paused").serving_weights() == [3.0, 1.0]  # the split stays where it was


@pytest.mark.parametrize("fields, message", [
    ({"arms": [{"name": "a", "deployment": "chat"}]}, "at least 2"),
    ({"arms": [{"name": "a", "deployment": "chat"}, {"name": "a", "deployment": "v2"}]}, "arm names must differ"),
    ({"arms": [{"name": "a", "deployment": "chat"}, {"name": "b", "deployment": "chat"}]}, "its own deployment"),
    ({"name": "bad name!"}, "letters, digits"),
    ({"promoted_arm": "nobody"}, "not an arm"),
    ({"arms": [{"name": "a", "deployment": "chat", "weight": 0}, {"name": "b", "deployment": "v2", "weight": 0}]},
     "weight above 0"),
])
def test_the_spec_refuses_what_cannot_run(fields, message):
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


def test_an_experiment_whose_deployments_are_gone_routes_nothing():
    from shipyard.experiments.registry import ExperimentRegistry

    served = {"chat", "chat-v2"}
    registry = ExperimentRegistry(None, [], lambda: served)
    registry.specs, registry.versions = {"rollout": spec()}, {"rollout": 1}
    registry._reindex()
    assert registry.assign("chat", "t", "k", "alice", None) is not None
    served.discard("chat-v2")  # the challenger left the config
    registry._reindex()
    assert registry.assign("chat", "t", "k", "alice", None) is None
