"""Monitoring's cost on the request path, one run:

    python bench/monitoring.py [--requests 48] [--concurrency 8]

1. Added per request, in process: what the request path hands the monitors for one streamed
   answer of 32 tokens (latencies into the Prometheus histograms and the sliding windows, token
   and outcome counts, the confidence scores into the score writer's buffer), timed per request
   with monitoring on and off; the difference's p50/p99 in microseconds.
2. Serving throughput on the demo model through `shipyard serve`, monitoring on (windows,
   observers, confidence measured in the sampler, anomalies, an SLO, a rule, drift on a 5%
   sample) vs off (`monitor.enabled: false`, `confidence_scores: false`), streamed at the given
   concurrency.
3. Drift's own costs (bench/drift.py, one core): evaluating a 100,000-request window, and
   embedding throughput.

Prints a table; writes bench/results/monitoring.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from harness import serve_config, stream_chat  # noqa: E402


# Monitoring as an operator would run it: windows, confidence scores, anomalies, an SLO and a rule,
# and drift on a 5% sample (embedding every request costs a core's worth: see bench/drift.py).
MONITOR_ON = {"slos": [{"name": "chat", "deployment": "demo", "ttft_ms": 2000}],
              "alerts": {"rules": [{"name": "slow", "metric": "ttft_p95", "alert": 5.0}]},
              "drift": {"deployments": ["demo"], "sample": 0.05}}


def request_path_cost(requests: int, tokens: int = 32) -> dict:
    """Microseconds per request spent in the monitoring hooks, on and off."""
    from shipyard.hooks import FinishedRequest
    from shipyard.engines.base import Usage
    from shipyard.monitor.confidence import ConfidenceMonitor
    from shipyard.monitor.drift import DriftMonitor
    from shipyard.monitor.metrics import ServingMetrics
    from shipyard.monitor.scores import ScoreWriter
    from shipyard.monitor.service import MonitorService
    from shipyard.monitor.settings import DriftConfig, MonitorConfig

    def one_request(metrics: ServingMetrics, observers: list) -> float:
        start = time.perf_counter_ns()
        # what api/generation.py and the middleware call for one streamed answer
        metrics.observe_latency("demo", "ttft", 0.02)
        gaps = []
        for _ in range(tokens - 1):
            metrics.count_tokens("demo", "generation", 1, window=False)
            metrics.observe_latency("demo", "itl", 0.005, window=False)
            gaps.append((0.005, 1))
        metrics.count_tokens("demo", "prompt", 40)
        metrics.observe_latency("demo", "queue", 0.001)
        metrics.observe_latency("demo", "e2e", 0.2)
        metrics.close_request("demo", gaps, tokens)
        metrics.end_request("demo", "length", "t", 200, 0.02, 0.2)
        finished = FinishedRequest("req-1", "t", "k", "demo", 200, Usage(40, tokens), "miss",
                                   [{"mean_logprob": -1.2, "min_logprob": -4.0, "mean_entropy": 2.1, "tokens": tokens}],
                                   "length", "What is a tuple?", "A tuple is an immutable sequence.")
        for observe in observers:
            observe(finished)
        return (time.perf_counter_ns() - start) / 1000

    writer = ScoreWriter(db=None)  # its buffer only: flushing is off the request path
    engines = {"demo": None}.copy  # the windows only count deployments that exist
    drift = DriftMonitor(DriftConfig(deployments=["demo"]))  # every request queued (sample 1.0)
    on = ServingMetrics(engines), [ConfidenceMonitor(writer), drift]
    # the alerting hook (anomaly sums per series); its evaluation runs in the background
    monitor = MonitorService(MonitorConfig(), on[0].health, engines, None, None, Path(tempfile.gettempdir()))
    on[0].request_listeners.append(monitor.on_request_end)
    off = ServingMetrics(engines, windows=False), []  # Prometheus only (and the gaps list, which is the same)
    timings: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(requests):  # interleaved, so drift in the machine hits both alike
        for name, (metrics, observers) in (("on", on), ("off", off)) if i % 2 else (("off", off), ("on", on)):
            timings[name].append(one_request(metrics, observers))
        if len(writer._buffer) > 10_000:
            writer._buffer.clear()
            drift._pending.clear()
            monitor.anomaly.tick()
    added = sorted(a - b for a, b in zip(timings["on"], timings["off"]))
    return {"tokens_per_request": tokens, "on_p50_us": statistics.median(timings["on"]),
            "off_p50_us": statistics.median(timings["off"]), "added_p50_us": statistics.median(added),
            "added_p99_us": added[int(len(added) * 0.99) - 1]}


async def throughput(url: str, requests: int, concurrency: int, max_tokens: int) -> float:
    import aiohttp

    queue = list(range(requests))
    tokens = 0

    async def user(session) -> None:
        nonlocal tokens
        while queue:
            i = queue.pop()
            body = {"model": "demo", "max_tokens": max_tokens, "temperature": 0.8, "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"What is a tuple in Python? ({i})"}]}
            _, n = await stream_chat(session, url, body)  # awaited first: `tokens += await ...` would lose updates
            tokens += n

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await stream_chat(session, url, {"model": "demo", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]})
        started = time.perf_counter()
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
        return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="on/off pairs, alternated")
    args = parser.parse_args()
    from shipyard.demo.build import default_demo_path

    model = default_demo_path()
    if not (model / "config.json").exists():
        raise SystemExit(f"the demo model is not built ({model}); run `make demo-model`")
    results: dict = {"model": model.name, "requests": args.requests, "concurrency": args.concurrency,
                     "request_path": request_path_cost(20_000)}
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="shipyard-monitoring-") as tmp:
        for round_ in range(args.rounds):
            for name in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                enabled = name == "on"
                deployment = {"engine": "transformers", "model": str(model), "num_threads": 1, "max_num_seqs": 16,
                              "confidence_scores": enabled}
                config = {"deployments": {"demo": deployment}, "monitor": MONITOR_ON if enabled else {"enabled": False},
                          "cache": {"exact": {"enabled": False}}, "server": {"log_level": "warning"}}
                proc, url = serve_config(config, Path(tmp), f"{name}-{round_}")
                try:
                    rates[name].append(asyncio.run(throughput(url, args.requests, args.concurrency,
                                                              args.max_tokens)))
                finally:
                    proc.terminate()
                    proc.wait(60)
    results["tokens_per_s"] = {name: statistics.median(values) for name, values in rates.items()}
    results["throughput_ratio"] = results["tokens_per_s"]["on"] / results["tokens_per_s"]["off"]
    results["added_p50_us"] = results["request_path"]["added_p50_us"]
    results["added_p99_us"] = results["request_path"]["added_p99_us"]
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "bench" / "drift.py")], check=True)  # one core, its own process
    drift = json.loads((RESULTS / "drift.json").read_text())
    results["drift_eval_100k_s"] = drift["evaluation"]["seconds"]
    results["drift_embedding_requests_per_s"] = drift["embedding_requests_per_s"]
    path = results["request_path"]
    print(f"\nmonitoring hooks per request ({path['tokens_per_request']} tokens): on {path['on_p50_us']:.1f} µs, "
          f"off {path['off_p50_us']:.1f} µs; added p50 {path['added_p50_us']:.1f} µs, p99 {path['added_p99_us']:.1f} µs")
    print(f"throughput (demo model, c={args.concurrency}): on {results['tokens_per_s']['on']:.1f} tok/s, "
          f"off {results['tokens_per_s']['off']:.1f} tok/s, ratio {results['throughput_ratio']:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "monitoring.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'monitoring.json'}")


if __name__ == "__main__":
    main()
