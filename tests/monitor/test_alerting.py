"""Alerts end to end: a real server in front of a fake engine that is slowed, then fails; a real
webhook receiver that checks the HMAC and the Alertmanager v4 shape. A latency spike fires the rule
once and resolves when latency recovers; an SLO's burn-rate alert pages on an error burst, never on
a single error; rules are managed through the admin API; tenants see only their own alerts."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
import yaml

from conftest import ServerProcess, until
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient, call
from shipyard.monitor.notify import SIGNATURE_HEADER, verify
from webhook_receiver import WebhookReceiver

SECRET = "webhook-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    fake = FakeVLLM("up").start()
    receiver = WebhookReceiver(fail_first=1).__enter__()
    config = {
        "deployments": {"up": {"engine": "openai_http", "url": fake.url, "flavor": "vllm", "upstream_model": "m"}},
        "gateway": {"usage_flush_interval_s": 0.1},
        "cache": {"exact": {"enabled": False}},
        "monitor": {
            "window_slice_s": 0.5, "evaluation_interval_s": 0.2,
            "slos": [{"name": "avail", "deployment": "up", "objective": 0.99, "min_bad_events": 5}],
            "alerts": {
                "rules": [{"name": "slow-e2e", "metric": "e2e_p95", "deployment": "up", "alert": 0.4,
                           "window_s": 2, "for_s": 0.4}],
                "anomaly": {"enabled": False},
                "webhooks": [{"url": receiver.url, "secret_env": "ALERT_SECRET", "receiver": "ops",
                              "backoff_s": 0.1}],
            },
        },
    }
    env = {"SHIPYARD_ADMIN_KEY": ADMIN_KEY, "ALERT_SECRET": SECRET}
    with ServerProcess(config, tmp_path_factory.mktemp("alerting"), env=env) as proc:
        admin = AdminClient(proc.base_url)
        tenant = admin.tenant("alerted")
        key = admin.key(tenant)["key"]
        yield proc, fake, receiver, key, tenant
    receiver.__exit__()
    fake.stop()


def _chat(proc, key) -> int:
    return httpx.post(f"{proc.base_url}/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {key}"},
                      json={"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).status_code


def _checked(receiver: WebhookReceiver) -> None:
    for headers, body in receiver.accepted:
        assert headers["content-type"] == "application/json"
        assert verify(SECRET.encode(), headers[SIGNATURE_HEADER.lower()], body)


def test_a_latency_spike_fires_once_to_the_webhook_and_resolves_when_latency_recovers(stack):
    proc, fake, receiver, key, _ = stack
    for _ in range(5):
        assert _chat(proc, key) == 200
    time.sleep(1.0)
    assert receiver.alerts("slow-e2e") == []  # fast: nothing
    fake.mode, fake.delay_s = "slow", 0.6
    for _ in range(3):
        assert _chat(proc, key) == 200
    fired = receiver.wait_for("slow-e2e", "firing")
    assert receiver.refused == 1  # the first delivery got a 503 and was retried
    [alert] = fired["alerts"]
    assert alert["labels"] == {"alertname": "slow-e2e", "deployment": "up", "metric": "e2e_p95", "source": "rule",
                               "severity": "critical"}
    assert fired["receiver"] == "ops" and fired["version"] == "4" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    fake.mode, fake.delay_s = "ok", 0.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(b["status"] == "resolved" for b in receiver.alerts("slow-e2e")):
        _chat(proc, key)
        time.sleep(0.2)
    resolved = receiver.wait_for("slow-e2e", "resolved", timeout=1)
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert resolved["alerts"][0]["endsAt"] > resolved["alerts"][0]["startsAt"]
    assert [b["status"] for b in receiver.alerts("slow-e2e")] == ["firing", "resolved"]  # no duplicate
    _checked(receiver)
    history = call(proc.base_url, ADMIN_KEY, "GET", "/admin/alerts?deployment=up").json()
    mine = [e for e in history["data"] if e["alertname"] == "slow-e2e"]
    assert [e["status"] for e in mine] == ["resolved", "firing"] and all(e["delivered"] for e in mine)
    assert not any(a["alertname"] == "slow-e2e" for a in history["active"])


def test_the_burn_rate_alert_pages_on_an_error_burst_but_not_on_a_single_error(stack):
    proc, fake, receiver, key, _ = stack
    for _ in range(30):
        assert _chat(proc, key) == 200
    fake.mode = "error500"
    assert _chat(proc, key) >= 500
    fake.mode = "ok"
    time.sleep(1.5)  # several evaluations
    assert receiver.alerts("SLOBurnRate") == []
    sla = call(proc.base_url, ADMIN_KEY, "GET", "/admin/sla").json()["data"][0]
    assert sla["bad"] >= 1 and sla["burn_rates"][0]["alerting"] is False
    fake.mode = "error500"
    for _ in range(20):
        assert _chat(proc, key) >= 500
    fake.mode = "ok"
    receiver.wait_for("SLOBurnRate:avail", "firing")

    def pages() -> list[dict]:  # the 1× ticket may fire in the same evaluation and arrive first
        return [b for b in receiver.alerts("SLOBurnRate:avail")
                if b["status"] == "firing" and b["alerts"][0]["labels"]["severity"] == "page"]

    until(lambda: pages(), 30, "the error burst never paged")
    labels = pages()[0]["alerts"][0]["labels"]
    assert labels["slo"] == "avail" and labels["window"] in ("1h/5m", "6h/30m")
    sla = call(proc.base_url, ADMIN_KEY, "GET", "/admin/sla?slo=avail").json()["data"][0]
    assert sla["compliance"] < 0.99 and not sla["met"] and sla["error_budget_remaining"] < 0
    assert sla["periods"][-1]["requests"] == sla["requests"]
    assert call(proc.base_url, ADMIN_KEY, "GET", "/admin/sla?slo=nope").status_code == 404
    _checked(receiver)


def test_rules_are_managed_by_admins_and_races_leave_one(stack):
    proc, _, _, key, tenant = stack
    rule = {"name": "busy", "metric": "queue_depth", "operator": ">", "warning": 10}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda _: call(proc.base_url, ADMIN_KEY, "POST", "/admin/alerts/rules",
                                               json=rule).status_code, range(4)))
    assert codes == [201, 409, 409, 409]
    rules = call(proc.base_url, ADMIN_KEY, "GET", "/admin/alerts/rules").json()["data"]
    assert {(r["name"], r["origin"]) for r in rules} == {("slow-e2e", "config"), ("busy", "api")}
    assert call(proc.base_url, key, "POST", "/admin/alerts/rules", json={**rule, "name": "x"}).status_code == 403
    for bad in ({**rule, "metric": "nope"}, {**rule, "warning": None}, {**rule, "name": "a b"},
                {**rule, "deployment": "missing"}):
        assert call(proc.base_url, ADMIN_KEY, "POST", "/admin/alerts/rules", json=bad).status_code in (400, 404)
    assert call(proc.base_url, ADMIN_KEY, "DELETE", "/admin/alerts/rules/slow-e2e").status_code == 409
    assert call(proc.base_url, ADMIN_KEY, "DELETE", "/admin/alerts/rules/busy").status_code == 200
    assert call(proc.base_url, ADMIN_KEY, "DELETE", "/admin/alerts/rules/busy").status_code == 404
    exported = call(proc.base_url, ADMIN_KEY, "GET", "/admin/alerts/export/prometheus-rules")
    names = {r["alert"] for r in yaml.safe_load(exported.text)["groups"][0]["rules"]}
    assert names == {"slow-e2e", "SLOBurnRate_avail"}
    assert call(proc.base_url, ADMIN_KEY, "GET", "/admin/alerts/export/grafana").json()["panels"]


def test_a_tenant_sees_only_its_own_alerts_and_slas(stack):
    proc, _, _, _, tenant = stack
    admin = AdminClient(proc.base_url)
    viewer = admin.key(tenant, role="viewer")["key"]
    other = admin.tenant("other-alerted")
    assert call(proc.base_url, ADMIN_KEY, "GET", "/admin/alerts").json()["data"]  # global alerts exist
    own = call(proc.base_url, viewer, "GET", "/admin/alerts").json()
    assert own["data"] == [] and own["active"] == []  # global series are not a tenant's
    assert call(proc.base_url, viewer, "GET", f"/admin/alerts?tenant_id={other}").status_code == 403
    sla = call(proc.base_url, viewer, "GET", "/admin/sla").json()
    assert sla["tenant_id"] == tenant and "burn_rates" not in sla["data"][0]
    assert call(proc.base_url, viewer, "GET", f"/admin/sla?tenant_id={other}").status_code == 403
    other_viewer = admin.key(other, role="viewer")["key"]
    assert call(proc.base_url, other_viewer, "GET", "/admin/sla").json()["data"][0]["requests"] == 0
