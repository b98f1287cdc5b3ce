"""The local runtime with real worker processes on the tiny model: a step load (concurrency
1 → 8 → 1) scales the deployment 1 → N → 1 with zero failed requests; the replicas removed are
drained, so the streams they carry finish."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import ServerProcess, until
from load import start_users, stop_users


@pytest.fixture(scope="module")
def autoscaled(tiny_model, tmp_path_factory):
    worker = {"engine": "launch", "kind": "worker", "model": str(tiny_model)}
    config = {"auth": "disabled", "cache": {"exact": {"enabled": False}},
              "deployments": {"auto": {"replicas": [worker], "autoscaling": {
                  "min_replicas": 1, "max_replicas": 3, "target_queue_per_replica": 2, "interval_s": 0.5,
                  "scale_down_window_s": 4, "scale_down_interval_s": 2, "drain_timeout_s": 60, "replica": worker}}}}
    with ServerProcess(config, tmp_path_factory.mktemp("autoscaled")) as proc:
        proc.wait_for("/v1/models/auto", 200)
        yield proc


def _view(proc) -> dict:
    return httpx.get(f"{proc.base_url}/admin/deployments/auto/autoscaler", timeout=30).json()


def test_a_step_load_scales_up_and_back_with_no_failed_request(autoscaled):
    results: list = []
    stop, threads = start_users(autoscaled.base_url, "auto", 1, results)
    time.sleep(3)
    assert len(_view(autoscaled)["replicas"]) == 1  # one user fits one replica
    stop.set()
    stop, threads = start_users(autoscaled.base_url, "auto", 8, results)
    until(lambda: len(_view(autoscaled)["replicas"]) >= 2, 120, "never scaled up")
    ready_at = len(results)
    until(lambda: len(results) >= ready_at + 16, 120, "the new replicas served too little")
    stop_users(stop, threads)
    stop, threads = start_users(autoscaled.base_url, "auto", 1, results)
    until(lambda: len(_view(autoscaled)["replicas"]) == 1 and not _view(autoscaled)["draining"], 120,
           "never scaled back to one")
    stop_users(stop, threads)
    view = _view(autoscaled)
    assert [r for r in results if r is not True] == [], "a request failed while scaling"
    assert max(d["desired"] for d in view["decisions"]) >= 2 and view["scale_events"] >= 2
    assert any("down one" in reason for d in view["decisions"] for reason in d["reasons"])
    metrics = httpx.get(f"{autoscaled.base_url}/metrics", timeout=30).text
    assert 'shipyard:autoscaler_current_replicas{model_name="auto"} 1.0' in metrics
