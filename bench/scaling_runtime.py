"""The autoscaling runtimes, measured on real processes with the demo model:

    python bench/scaling_runtime.py [--measure-s 20]

1. Step to capacity: a deployment at 1 replica (max 2, target 2 requests each) under one user,
   then 8 users: the seconds until 2 replicas are ready and serving, on the local runtime (worker
   processes) and on Ray Serve (a two-node local Ray cluster, one replica per node).
2. At capacity, 8 closed-loop streaming users for `--measure-s`: median and P95 end-to-end
   latency, median TTFT and throughput through each runtime's path (gateway → worker, and
   gateway → Ray's proxy → Ray replica), side by side.
3. Cold start from zero (local, min_replicas 0): the first request's latency while a replica
   starts, against a warm request's.

Ray probes cloud-metadata addresses, so the whole run happens inside a loopback-only network
namespace (the script re-executes itself under `unshare -n`). Prints a table; writes
bench/results/scaling_runtime.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from gateway_overhead import ADMIN, free_port, pct  # noqa: E402
from harness import HEADERS, serve_config, stream_chat  # noqa: E402

NETNS_FLAG = "SHIPYARD_BENCH_IN_NETNS"
RAY = str(Path(sys.executable).with_name("ray"))
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
           "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}
BODY = {"model": "demo", "max_tokens": 32, "ignore_eos": True, "messages": [{"role": "user", "content": "Tell me"}]}


def _get(url: str) -> dict:
    import httpx

    return httpx.get(url, headers=HEADERS, timeout=30).json()


def ready_replicas(url: str) -> int:
    deployments = _get(f"{url}/admin/deployments")["data"]
    return sum(r["ready"] for d in deployments if d["name"] == "demo" for r in d["replicas"])


async def users(url: str, count: int, stop_at: float, out: list) -> None:
    """`count` closed-loop streaming users until `stop_at`; (start, ttft_ms, latency_s, tokens) each."""
    import aiohttp

    async def user(session) -> None:
        while time.monotonic() < stop_at:
            start = time.monotonic()
            ttft, tokens = await stream_chat(session, url, BODY)
            out.append((start, ttft, time.monotonic() - start, tokens))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(user(session) for _ in range(count)))


async def step_and_measure(url: str, capacity_of, measure_s: float) -> dict:
    """1 user, then 8: seconds until `capacity_of()` says 2; then `measure_s` at capacity."""
    warm: list = []
    await users(url, 1, time.monotonic() + 5, warm)
    done: list = []
    step = time.monotonic()
    load = asyncio.create_task(users(url, 8, float("inf"), done))
    try:
        while await asyncio.to_thread(capacity_of) < 2:
            if time.monotonic() - step > 300:
                raise TimeoutError("never reached 2 replicas")
            await asyncio.sleep(0.5)
        reached = time.monotonic() - step
        await asyncio.sleep(measure_s)
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    window = [d for d in done if d[0] >= step + reached]
    latencies = [d[2] for d in window]
    return {"step_to_capacity_s": round(reached, 1), "requests_at_capacity": len(window),
            "latency_p50_s": round(statistics.median(latencies), 3), "latency_p95_s": round(pct(latencies, 95), 3),
            "ttft_p50_ms": round(statistics.median(d[1] for d in window), 1),
            "tokens_per_s": round(sum(d[3] for d in window) / measure_s, 1)}


def scaling(min_replicas: int, **extra) -> dict:
    return {"min_replicas": min_replicas, "max_replicas": 2, "target_queue_per_replica": 2, "interval_s": 0.5,
            "scale_down_window_s": 600, "scale_to_zero_delay_s": 600, **extra}


def local_run(model: str, workdir: Path, measure_s: float) -> dict:
    worker = {"engine": "launch", "kind": "worker", "model": model}
    config = {"cache": {"exact": {"enabled": False}}, "server": {"log_level": "warning"},
              "deployments": {"demo": {"autoscaling": {**scaling(1), "replica": worker}}}}
    proc, url = serve_config(config, workdir, "local")
    try:
        _wait_ready_replicas(url, 1)
        return asyncio.run(step_and_measure(url, lambda: ready_replicas(url), measure_s))
    finally:
        proc.terminate()
        proc.wait(60)


def cold_start_run(model: str, workdir: Path) -> dict:
    worker = {"engine": "launch", "kind": "worker", "model": model}
    config = {"cache": {"exact": {"enabled": False}}, "server": {"log_level": "warning"},
              "deployments": {"demo": {"autoscaling": {**scaling(0), "replica": worker}}}}
    proc, url = serve_config(config, workdir, "zero")
    try:
        import httpx

        def one() -> float:
            start = time.monotonic()
            answer = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=HEADERS, timeout=300)
            assert answer.status_code == 200, answer.text
            return time.monotonic() - start

        assert ready_replicas(url) == 0
        cold = one()
        warm = statistics.median(one() for _ in range(5))
        return {"cold_first_request_s": round(cold, 2), "warm_request_s": round(warm, 3),
                "cold_start_s": _get(f"{url}/admin/deployments/demo/autoscaler")["cold_start"]["last_cold_start_s"]}
    finally:
        proc.terminate()
        proc.wait(60)


def ray_run(model: str, workdir: Path, measure_s: float) -> dict:
    env = {**os.environ, **RAY_ENV}
    port = free_port()
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT, "timeout": 120}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, **quiet)
    try:
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1"], check=True, **quiet)
        os.environ.update(RAY_ENV)
        worker = {"engine": "launch", "kind": "worker", "model": model}
        ray = {"address": f"127.0.0.1:{port}", "proxy_port": free_port(), "num_cpus": 0.6, "look_back_period_s": 2}
        config = {"cache": {"exact": {"enabled": False}}, "server": {"log_level": "warning"},
                  "deployments": {"demo": {"autoscaling": {**scaling(1), "runtime": "ray", "ray": ray,
                                                           "replica": worker}}}}
        started = time.monotonic()
        proc, url = serve_config(config, workdir, "ray")
        deploy_s = time.monotonic() - started
        try:
            result = asyncio.run(step_and_measure(
                url, lambda: len(_get(f"{url}/admin/deployments/demo/autoscaler")["replicas"]), measure_s))
            return {**result, "deploy_s": round(deploy_s, 1)}
        finally:
            proc.terminate()
            proc.wait(60)
    finally:
        subprocess.run([RAY, "stop", "--force"], **quiet)


def _wait_ready_replicas(url: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while ready_replicas(url) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} replica(s) never ready")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure-s", type=float, default=20.0)
    args = parser.parse_args()
    if not os.environ.get(NETNS_FLAG):
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, *sys.argv]
        raise SystemExit(subprocess.run(command, env={**os.environ, NETNS_FLAG: "1"}).returncode)
    from shipyard.demo.build import default_demo_path

    model = str(default_demo_path())
    os.environ.setdefault("SHIPYARD_ADMIN_KEY", ADMIN)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        local = local_run(model, workdir, args.measure_s)
        ray = ray_run(model, workdir, args.measure_s)
        cold = cold_start_run(model, workdir)
    result = {"model": "demo", "replicas_at_capacity": 2, "users": 8, "measure_s": args.measure_s,
              "local": local, "ray": ray, "cold_start": cold,
              "ray_vs_local_latency_p50_ratio": round(ray["latency_p50_s"] / local["latency_p50_s"], 3),
              "ray_vs_local_ttft_p50_ratio": round(ray["ttft_p50_ms"] / local["ttft_p50_ms"], 3),
              "ray_vs_local_throughput_ratio": round(ray["tokens_per_s"] / local["tokens_per_s"], 3)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling_runtime.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':28}{'local':>12}{'ray':>12}")
    for key in ("step_to_capacity_s", "latency_p50_s", "latency_p95_s", "ttft_p50_ms", "tokens_per_s",
                "requests_at_capacity"):
        print(f"{key:28}{local[key]:>12}{ray[key]:>12}")
    print(f"cold start from zero (local): first request {cold['cold_first_request_s']} s "
          f"(replica start {cold['cold_start_s']:.1f} s), warm {cold['warm_request_s']} s")
    print(f"ray / local at c=8: latency p50 ×{result['ray_vs_local_latency_p50_ratio']}, "
          f"TTFT p50 ×{result['ray_vs_local_ttft_p50_ratio']}, throughput ×{result['ray_vs_local_throughput_ratio']}")


if __name__ == "__main__":
    main()
