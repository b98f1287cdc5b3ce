"""The autoscaling simulation table, for the four traces:

    python bench/scaling.py

Each trace is replayed through the real policy core (shipyard/scaling/policy.py) with modelled
replicas (20 s cold start, continuous batching with a knee of 8), and with static provisioning at
the minimum and at the peak. Prints the table; writes bench/results/scaling.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.scaling.simulate import DEFAULT_CONFIG, TRACES, compare

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEYS = ("sla_attainment", "replica_seconds_vs_static_peak", "time_to_scale_up_s", "scale_events", "shed")


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def main() -> None:
    traces = {}
    print(f"{'trace':8} {'SLA':>7} {'vs peak':>8} {'vs min':>7} {'peak':>5} {'up s':>6} {'events':>7} {'shed':>5}")
    for name in TRACES:
        result = compare(name, DEFAULT_CONFIG)
        traces[name] = {**{key: result[key] for key in KEYS},
                        "replica_seconds_vs_static_min": result["replica_seconds_vs_static_min"],
                        "replica_seconds": result["replica_seconds"],
                        "static_min": result["static_min"], "static_peak": result["static_peak"]}
        print(f"{name:8} {result['sla_attainment']:7.2%} {result['replica_seconds_vs_static_peak']:8.2f} "
              f"{result['replica_seconds_vs_static_min']:7.2f} {result['static_peak']['replicas']:5d} "
              f"{_seconds(result['time_to_scale_up_s']):>6} {result['scale_events']:7d} {result['shed']:5d}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "scaling.json"
    path.write_text(json.dumps({"config": DEFAULT_CONFIG.model_dump(), "traces": traces}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
