"""The Ray runtime: Shipyard's policy as Ray Serve's autoscaling policy (units on a stand-in for
Ray's context), the config, and the end-to-end run on a real two-node Ray cluster
(tests/scaling/ray_scenario.py, inside a loopback-only network namespace)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from shipyard.config import RoutedDeployment, ShipyardConfig, TransformersDeployment
from shipyard.scaling.ray_serve import ShipyardRayPolicy

WORKER = {"engine": "launch", "kind": "worker", "model": "/models/tiny"}
SCENARIO = Path(__file__).with_name("ray_scenario.py")


def context(now: float, total: float, queued: float, running: int, target: int) -> SimpleNamespace:
    """The fields of ray.serve.config.AutoscalingContext the policy reads."""
    return SimpleNamespace(total_num_requests=total, total_queued_requests=queued, current_num_replicas=running,
                           target_num_replicas=target, current_time=now, policy_state={"ray-internal": 1})


def test_the_policy_reads_rays_figures_as_the_same_signals(monkeypatch):
    monkeypatch.setattr(ShipyardRayPolicy, "_publish", lambda self: None)  # no cluster to publish to here
    policy = ShipyardRayPolicy("tiny", min_replicas=1, max_replicas=4, target_queue_per_replica=2,
                               scale_down_window_s=10, scale_down_interval_s=5)
    replicas, state = policy(context(0, total=7.5, queued=3.2, running=1, target=1))
    assert replicas == 4 and state == {"ray-internal": 1}  # 8 requests at 2 each; Ray's own state kept
    assert policy.decisions[-1]["running"] == 4 and policy.decisions[-1]["waiting"] == 4
    # three of them still starting (target 4, one running): counted as capacity, nothing more asked
    assert policy(context(1, total=12, queued=8, running=1, target=4))[0] == 4
    assert policy(context(2, total=1, queued=0, running=4, target=4))[0] == 4  # down waits out its window
    assert policy(context(13, total=1, queued=0, running=4, target=4))[0] == 3  # then one at a time
    assert policy(context(14, total=0, queued=0, running=3, target=3))[0] == 3  # the interval between downs
    assert policy.scale_events == 2 and any("down one" in r for r in policy.decisions[-2]["reasons"])


def test_the_ray_runtime_config():
    ray = {"runtime": "ray", "replica": WORKER}
    with pytest.raises(ValidationError, match="kind: worker"):
        RoutedDeployment(autoscaling={**ray, "replica": {**WORKER, "kind": "vllm"}})
    with pytest.raises(ValidationError, match="least is 1"):
        RoutedDeployment(autoscaling={**ray, "min_replicas": 0})
    with pytest.raises(ValidationError, match="leave `replicas` out"):
        RoutedDeployment(replicas=[WORKER], autoscaling=ray)
    config = ShipyardConfig(deployments={"tiny": TransformersDeployment(model="/models/tiny", num_threads=2)})
    on_ray = config.on_runtime("ray", "10.0.0.5:6379").deployments["tiny"]
    assert isinstance(on_ray, RoutedDeployment) and on_ray.autoscaling.runtime == "ray"
    assert on_ray.autoscaling.ray.address == "10.0.0.5:6379" and on_ray.autoscaling.replica.num_threads == 2
    back = ShipyardConfig(deployments={"tiny": on_ray}).on_runtime("local").deployments["tiny"]
    assert back.autoscaling.runtime == "local"


@pytest.fixture(scope="module")
def ray_report(tiny_model, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("ray")
    out = workdir / "report.json"
    run = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
                          str(SCENARIO), str(tiny_model), str(workdir), str(out)],
                         capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text()) if out.exists() else {}
    assert run.returncode == 0, f"{report}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return report


def test_a_step_load_on_a_two_node_ray_cluster_scales_up_and_back(ray_report):
    r = ray_report
    assert r["nodes"] == 2 and r["replicas_at_one_user"] == 1
    assert r["cpus_per_node_at_peak"] == [0.6, 0.6]  # one replica on each node: placed by resources
    assert r["step_failures"] == [] and r["step_requests"] > 30
    assert r["max_desired"] == 2 and r["scale_events"] >= 2  # up to the max, and back
    assert "down one" in r["reasons"]
    assert r["metrics_current"] == ['shipyard:autoscaler_current_replicas{model_name="tiny"} 1.0']


def test_a_killed_ray_replica_is_replaced_and_requests_succeed(ray_report):
    assert ray_report["after_kill"] == [200, 200, 200, 200]
    assert ray_report["replaced_s"] < 180
