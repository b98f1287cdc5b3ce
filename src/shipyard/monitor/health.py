"""System health over sliding windows, per deployment: what `/metrics` has since start, as
percentiles and rates over the last N seconds (`GET /admin/monitor/health`).

Series (OpenTelemetry GenAI names alongside Shipyard's, see docs/monitoring.md):
- time to first token (`gen_ai.server.time_to_first_token`), inter-token latency
  (`gen_ai.server.time_per_output_token`), end-to-end latency (`gen_ai.server.request.duration`),
  queue wait: P50/P95/P99 and mean;
- requests, by outcome (finish reason or error type), and their rate; prompt and generated tokens
  and their rate (`gen_ai.client.token.usage`);
- live: queue depth, running requests, KV-cache usage, from the engines at query time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shipyard.monitor.window import SlidingCounter, SlidingHistogram

LATENCIES = ("ttft", "itl", "e2e", "queue")


class DeploymentWindows:
    def __init__(self, clock: Callable[[], float], slice_s: float = 10.0):
        slices = max(1, round(3600 / slice_s))  # an hour, at any resolution
        self.latency = {name: SlidingHistogram(slice_s, slices, clock) for name in LATENCIES}
        self.outcomes = SlidingCounter(slice_s, slices, clock)  # finish reasons and error types
        self.tokens = SlidingCounter(slice_s, slices, clock)  # prompt / generation
        self.busy = SlidingCounter(slice_s, slices, clock)  # engine-busy seconds, sampled
        self.busy_seen: float | None = None  # the engine's busy counter at the last sample


class HealthWindows:
    def __init__(self, clock: Callable[[], float] = time.monotonic, slice_s: float = 10.0):
        self.clock = clock
        self.slice_s = slice_s
        self._deployments: dict[str, DeploymentWindows] = {}

    def of(self, deployment: str) -> DeploymentWindows:
        windows = self._deployments.get(deployment)
        if windows is None:
            windows = self._deployments[deployment] = DeploymentWindows(self.clock, self.slice_s)
        return windows

    def sample_busy(self, engines: dict) -> None:
        """Add each engine's busy time since the last sample (its utilization over a window is the
        busy seconds in it ÷ the window)."""
        for name, engine in engines.items():
            busy = engine.stats().busy_s
            windows = self.of(name)
            if windows.busy_seen is not None and busy >= windows.busy_seen:
                windows.busy.add("busy", busy - windows.busy_seen)
            windows.busy_seen = busy

    def summary(self, window_s: float, engines: dict, only: str | None = None) -> list[dict]:
        rows = []
        for name in sorted(set(engines) | set(self._deployments)):
            if only is not None and name != only:
                continue
            windows = self.of(name)
            outcomes = windows.outcomes.totals(window_s)
            tokens = windows.tokens.totals(window_s)
            requests = sum(outcomes.values())
            errors = {k.removeprefix("error:"): v for k, v in outcomes.items() if k.startswith("error:")}
            row = {
                "deployment": name,
                "window_s": window_s,
                "requests": requests,
                "requests_per_s": requests / window_s,
                "outcomes": {k: v for k, v in outcomes.items() if not k.startswith(("error:", "refused:"))},
                "errors": errors,  # the server's failures (5xx): the error rate's numerator
                "refused": {k.removeprefix("refused:"): v for k, v in outcomes.items() if k.startswith("refused:")},
                "error_rate": sum(errors.values()) / requests if requests else 0.0,
                "prompt_tokens": tokens["prompt"],
                "generation_tokens": tokens["generation"],
                "generation_tokens_per_s": tokens["generation"] / window_s,
                "utilization": min(1.0, windows.busy.totals(window_s)["busy"] / window_s),
                **{f"{name}_s": windows.latency[name].summary(window_s) for name in LATENCIES},
            }
            engine = engines.get(name)
            if engine is not None:
                stats = engine.stats()
                row["live"] = {"waiting": stats.num_waiting, "running": stats.num_running,
                               "kv_cache_usage": stats.kv_cache_usage}
            rows.append(row)
        return rows
