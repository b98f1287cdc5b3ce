"""The Ray runtime end to end, run inside a loopback-only network namespace (Ray probes cloud
metadata addresses): a Ray head and a second Ray node (one CPU each; replicas take 0.6, so the
second replica must go to the other node), the gateway started with `--runtime ray --ray-address`,
a step load 1 → 8 → 1 through the gateway, then a replica killed under Ray's feet.

    unshare -n sh -c 'ip link set lo up && exec "$@"' sh python ray_scenario.py MODEL WORKDIR OUT.json

Writes what it saw to OUT.json; tests/scaling/test_ray_runtime.py asserts on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # conftest, load

from conftest import ServerProcess, free_port, until  # noqa: E402
from load import start_users, stop_users  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
       # replicas report their queues twice a second (default 10 s), so the policy sees a step quickly
       "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
       "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}


def ray_cli(*args: str) -> None:
    subprocess.run([RAY, *args], env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                   timeout=120)


def per_node_cpus() -> list[float]:
    """CPUs taken on each node (replicas hold 0.6; Serve's controller and proxy hold none)."""
    import ray

    from ray._private.state import available_resources_per_node, state

    available = available_resources_per_node()
    return sorted(round(node["Resources"].get("CPU", 0) - available.get(node["NodeID"], {}).get("CPU", 0), 2)
                  for node in state.node_table() if node["Alive"]) if ray.is_initialized() else []


def main(model: str, workdir: Path, out: Path) -> None:
    os.environ.update(ENV)
    port = free_port()
    ray_cli("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
            "--disable-usage-stats")
    report: dict = {"nodes": 0}
    try:
        ray_cli("start", f"--address=127.0.0.1:{port}", "--num-cpus=1")
        import ray

        ray.init(address=f"127.0.0.1:{port}", namespace="observer", log_to_driver=False, configure_logging=False)
        report["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
        run(model, workdir, port, report)
    finally:
        out.write_text(json.dumps(report, indent=1))
        # Leave the cluster before stopping it: a driver still connected when `ray stop` kills the GCS
        # waits 60 s for it at exit, then Ray ends the process with status 1 (seen in CI).
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        subprocess.run([RAY, "stop", "--force"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                       timeout=120)


def run(model: str, workdir: Path, port: int, report: dict) -> None:
    import ray

    worker = {"engine": "launch", "kind": "worker", "model": model}
    config = {"auth": "disabled", "cache": {"exact": {"enabled": False}},
              "deployments": {"tiny": {"autoscaling": {
                  "min_replicas": 1, "max_replicas": 2, "target_queue_per_replica": 2,
                  "scale_down_window_s": 4, "scale_down_interval_s": 2, "drain_timeout_s": 30, "replica": worker,
                  "ray": {"proxy_port": free_port(), "num_cpus": 0.6, "look_back_period_s": 2,
                          "health_check_period_s": 2}}}}}
    started = time.monotonic()
    with ServerProcess(config, workdir, extra_args=["--runtime", "ray", "--ray-address", f"127.0.0.1:{port}"]) as proc:
        proc.wait_for("/v1/models/tiny", 200, timeout=300)
        report["deploy_s"] = round(time.monotonic() - started, 1)

        def view() -> dict:
            return httpx.get(f"{proc.base_url}/admin/deployments/tiny/autoscaler", timeout=30).json()

        results: list = []
        stop, threads = start_users(proc.base_url, "tiny", 1, results)
        time.sleep(4)
        report["replicas_at_one_user"] = len(view()["replicas"])
        stop_users(stop, threads)
        stop, threads = start_users(proc.base_url, "tiny", 8, results)
        step = time.monotonic()
        until(lambda: len(view()["replicas"]) >= 2, 180, "never scaled up on Ray")
        report["step_to_capacity_s"] = round(time.monotonic() - step, 1)
        report["cpus_per_node_at_peak"] = per_node_cpus()
        served = len(results)
        until(lambda: len(results) >= served + 16, 180, "the new replica served too little")
        stop_users(stop, threads)
        stop, threads = start_users(proc.base_url, "tiny", 1, results)
        until(lambda: len(view()["replicas"]) == 1 and not view()["starting"], 180, "never scaled back to one")
        stop_users(stop, threads)
        report["step_requests"] = len(results)
        report["step_failures"] = [r for r in results if r is not True]
        final = view()
        report["max_desired"] = max(d["desired"] for d in final["decisions"])
        report["reasons"] = sorted({r.split(" (")[0].split(":")[0] for d in final["decisions"] for r in d["reasons"]})
        report["scale_events"] = final["scale_events"]
        report["metrics_current"] = [line for line in httpx.get(f"{proc.base_url}/metrics", timeout=30).text.splitlines()
                                     if line.startswith("shipyard:autoscaler_current_replicas")]

        # A replica killed under Ray's feet: Serve replaces it, and requests keep succeeding.
        until(lambda: len(replica_actors()) == 1, 120, "the scaled-down replica's actor never went")
        victim = replica_actors()[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed = time.monotonic()
        after = []
        for _ in range(4):
            body = {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "again"}]}
            answer = httpx.post(f"{proc.base_url}/v1/chat/completions", json=body, timeout=180)
            after.append(answer.status_code)
        report["after_kill"] = after
        until(lambda: replica_actors() and victim not in replica_actors() and len(view()["replicas"]) == 1, 180,
              "the killed replica was never replaced")
        report["replaced_s"] = round(time.monotonic() - killed, 1)


def replica_actors() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and "SERVE_REPLICA" in a["name"] and "tiny-engine" in a["name"]]

if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
