"""Drift in the serving path: a real server watching its deployment's traffic. A burst of a kind
of request its reference never had raises the new-pattern alert at a real webhook; drift figures
are global (every tenant's traffic), so only admins and metrics keys read them; no prompt text is
kept unless the deployment opts in."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call, gateway_config
from traffic import code_prompt, prose_prompt
from webhook_receiver import WebhookReceiver


@pytest.fixture(scope="module")
def watched(tiny_model, tmp_path_factory):
    with WebhookReceiver() as receiver:
        config = gateway_config(tiny_model, usage_flush_interval_s=0.1)
        config["cache"] = {"exact": {"enabled": False}}
        config["monitor"] = {
            "evaluation_interval_s": 0.2,
            "alerts": {"anomaly": {"enabled": False}, "webhooks": [{"url": receiver.url, "secret": "s" * 32}]},
            "drift": {"deployments": [MODEL_NAME], "reference_size": 150, "current_size": 60, "min_current": 20,
                      "recent": 20, "evaluation_interval_s": 0.3, "new_pattern_clusters": 8},
        }
        with ServerProcess(config, tmp_path_factory.mktemp("drift"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
            admin = AdminClient(proc.base_url)
            tenant = admin.tenant("drifting")
            yield proc, receiver, admin.key(tenant)["key"], admin.key(tenant, role="viewer")["key"]


def _send(proc, key, prompts):
    with httpx.Client(timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
        for prompt in prompts:
            response = http.post(f"{proc.base_url}/v1/chat/completions",
                                 json={"model": MODEL_NAME, "max_tokens": 3,
                                       "messages": [{"role": "user", "content": prompt}]})
            assert response.status_code == 200


def _status(proc) -> dict:
    return call(proc.base_url, ADMIN_KEY, "GET", "/admin/drift?evaluate=true").json()["data"][0]


def test_a_burst_of_a_new_kind_of_request_raises_the_new_pattern_alert(watched):
    proc, receiver, key, viewer = watched
    rng = random.Random(3)
    _send(proc, key, [prose_prompt(rng) for _ in range(170)])
    deadline = time.monotonic() + 30
    while _status(proc)["current_rows"] < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    calm = _status(proc)
    assert calm["reference_rows"] == 150 and calm["reference_frozen"]
    assert not calm["report"]["new_patterns"]["alerting"]
    assert calm["recent_prompts"] is None  # no text kept without the opt-in
    assert receiver.alerts("NewPattern") == []
    _send(proc, key, [code_prompt(rng) for _ in range(20)])
    fired = receiver.wait_for("NewPattern", "firing", timeout=60)
    assert fired["alerts"][0]["labels"]["deployment"] == MODEL_NAME
    report = _status(proc)["report"]
    assert report["new_patterns"]["share"] >= 0.5 and report["input"]["drifted"]
    history = call(proc.base_url, ADMIN_KEY, "GET", "/admin/alerts").json()["data"]
    assert any(e["alertname"] == "NewPattern" and e["status"] == "firing" for e in history)


def test_drift_is_read_by_admins_only_and_its_reference_can_be_reset(watched):
    proc, _, key, viewer = watched
    for tenant_key in (key, viewer):
        assert call(proc.base_url, tenant_key, "GET", "/admin/drift").status_code == 403
        assert call(proc.base_url, tenant_key, "POST", f"/admin/drift/{MODEL_NAME}/reset-reference").status_code == 403
    assert call(proc.base_url, ADMIN_KEY, "GET", "/admin/drift?deployment=nope").status_code == 404
    assert call(proc.base_url, ADMIN_KEY, "POST", "/admin/drift/nope/reset-reference").status_code == 404
    reset = call(proc.base_url, ADMIN_KEY, "POST", f"/admin/drift/{MODEL_NAME}/reset-reference").json()
    assert reset["current_rows"] == 0 and reset["reference_rows"] > 0 and reset["report"] is None
