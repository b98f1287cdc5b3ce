"""The experiments' costs, in process:

    python bench/experiments.py

1. Assignment on the request path: `ExperimentRegistry.assign` for an A/B experiment (two arms,
   sticky by user), per call, p50 and p99 in µs over 200,000 calls with distinct users; and a model
   without an experiment (the lookup every request pays).
2. The statistics engine: an mSPRT comparison fed 100,000 observations (50,000 per arm), asked for
   a decision after every one; decisions per second.

Prints a table; writes bench/results/experiments.json.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from shipyard.experiments.registry import ExperimentRegistry
from shipyard.experiments.spec import ExperimentSpec
from shipyard.experiments.statistics import SequentialTest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def assignment(calls: int = 200_000) -> dict:
    registry = ExperimentRegistry(None, [], lambda: {"chat", "chat-v2"})
    spec = ExperimentSpec(name="rollout", model="chat", mode="ab", unit="user",
                          arms=[{"name": "champion", "deployment": "chat"}, {"name": "b", "deployment": "chat-v2"}])
    registry.specs, registry.versions = {"rollout": spec}, {"rollout": 1}
    registry._reindex()
    users = [f"user-{i}" for i in range(calls)]
    timings, plain = [], []
    clock = time.perf_counter_ns
    for user in users:
        start = clock()
        registry.assign("chat", "tenant", "key", user, None)
        timings.append((clock() - start) / 1000)
        start = clock()
        registry.assign("other", "tenant", "key", user, None)
        plain.append((clock() - start) / 1000)
    return {"calls": calls, "assign_p50_us": round(percentile(timings, 50), 2),
            "assign_p99_us": round(percentile(timings, 99), 2),
            "no_experiment_p50_us": round(percentile(plain, 50), 2)}


def decisions(observations: int = 100_000) -> dict:
    rng = random.Random(3)
    test = SequentialTest("latency", higher_is_better=False, min_samples=100)
    values = [rng.lognormvariate(0, 0.5) for _ in range(observations)]
    start = time.perf_counter()
    for index, value in enumerate(values):
        test.observe(index % 2, value)
        test.result()
    elapsed = time.perf_counter() - start
    return {"observations": observations, "decisions_per_s": round(observations / elapsed),
            "final_decision": test.result().decision}


def main() -> None:
    result = {"assignment": assignment(), "statistics": decisions()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "experiments.json").write_text(json.dumps(result, indent=2) + "\n")
    a, s = result["assignment"], result["statistics"]
    print(f"{'assignment p50 / p99':40}{a['assign_p50_us']:>8} / {a['assign_p99_us']} µs")
    print(f"{'lookup without an experiment p50':40}{a['no_experiment_p50_us']:>8} µs")
    print(f"{'mSPRT decisions per second (100k obs)':40}{s['decisions_per_s']:>8}")


if __name__ == "__main__":
    main()
