"""Self-hosted cost from compute time: every engine step's duration is shared among the requests it
computed, so a request's cost is its share × the configured $/core-hour (or $/GPU-hour); the costs
of the requests add up to the engine's busy time; a model the price table names keeps its price;
utilization (busy ÷ wall time) is in the health figures and /metrics."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from conftest import MODEL_NAME, ServerProcess, deployment
from gateway_support import ADMIN_KEY, AdminClient, call


def _busy(base_url: str, model: str) -> float:
    text = call(base_url, ADMIN_KEY, "GET", "/metrics").text
    match = re.search(rf'shipyard:engine_busy_seconds_total{{model_name="{model}"}} ([0-9.e+-]+)', text)
    return float(match.group(1))


@pytest.fixture(scope="module")
def priced(tiny_model, tmp_path_factory):
    config = {"deployments": {MODEL_NAME: deployment(tiny_model), "listed": deployment(tiny_model)},
              "gateway": {"usage_flush_interval_s": 0.1, "prices": {"listed": {"prompt": 1.0, "completion": 2.0}}},
              "cache": {"exact": {"enabled": False}},
              "monitor": {"compute_prices": {"cpu_core_hour": 3600.0}, "window_slice_s": 1,
                          "evaluation_interval_s": 0.2}}
    with ServerProcess(config, tmp_path_factory.mktemp("compute"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


def test_costs_are_shares_of_engine_time_and_add_up_to_busy_time(priced):
    admin = AdminClient(priced.base_url)
    tenant = admin.tenant("compute")
    key = admin.key(tenant)["key"]
    before = _busy(priced.base_url, MODEL_NAME)
    with httpx.Client(timeout=60, headers={"authorization": f"Bearer {key}"}) as http:
        for i in range(6):
            for model in (MODEL_NAME, "listed"):
                body = {"model": model, "max_tokens": 6 + i, "ignore_eos": True,
                        "messages": [{"role": "user", "content": f"count to {i}"}]}
                assert http.post(f"{priced.base_url}/v1/chat/completions", json=body).status_code == 200
    time.sleep(0.6)
    busy = _busy(priced.base_url, MODEL_NAME) - before
    rows = {r["model"]: r for r in call(priced.base_url, ADMIN_KEY, "GET",
                                        f"/admin/usage?tenant_id={tenant}&group_by=model").json()["data"]}
    # $3600 per core-hour on one thread: one dollar per engine-second
    assert rows[MODEL_NAME]["cost_usd"] == pytest.approx(busy, rel=0.05) and busy > 0
    listed = rows["listed"]
    assert listed["cost_usd"] == pytest.approx((listed["prompt_tokens"] * 1 + listed["completion_tokens"] * 2) / 1e6)
    health = call(priced.base_url, ADMIN_KEY, "GET", f"/admin/monitor/health?deployment={MODEL_NAME}&window_s=60")
    assert 0 < health.json()["data"][0]["utilization"] <= 1
    assert health.json()["gpus"] == []  # no GPU here: NVML reports nothing, and nothing fails
