"""Canaries analysed and moved automatically, through a real server: a challenger failing 20% of
its requests is rolled back at the first step once the minimum sample is in; a healthy one is
promoted through every step; each transition is in the audit log exactly once and reaches the
alert webhook; the analysis itself is unit-checked on made-up rows."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import ServerProcess, deployment, until
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient
from shipyard.experiments.canary import analyse
from shipyard.experiments.spec import CanarySettings
from webhook_receiver import WebhookReceiver

CANARY = {"steps": [0.3, 0.6, 1.0], "min_requests": 8, "step_min_s": 0, "failure_limit": 1}


def test_the_analysis_on_made_up_rows():
    settings = CanarySettings(min_requests=20)
    good = [(200, 100.0, 20.0, 0.001)] * 40
    assert analyse(settings, good, good[:10], ([], []))["verdict"] == "wait"
    assert analyse(settings, good, good, ([], []))["verdict"] == "pass"
    failing = [(500, 50.0, None, 0.0)] * 8 + [(200, 100.0, 20.0, 0.001)] * 32
    verdict = analyse(settings, good, failing, ([], []))
    assert verdict["verdict"] == "fail" and not verdict["checks"]["error_rate"]["ok"]
    slow = [(200, 400.0, 20.0, 0.001)] * 40
    assert not analyse(settings, good, slow, ([], []))["checks"]["latency_p95_ms"]["ok"]
    jittery = [(200, 33.0, 20.0, 0.001)] * 40  # twice the champion's 17 ms, but 16 ms is jitter
    champion = [(200, 17.0, 20.0, 0.001)] * 40
    assert analyse(settings, champion, jittery, ([], []))["checks"]["latency_p95_ms"]["ok"]
    disliked = analyse(settings, good, good, ([True] * 30, [False] * 30))
    assert disliked["verdict"] == "fail" and not disliked["checks"]["thumbs_up_rate"]["ok"]


@pytest.fixture(scope="module")
def stack(tiny_model, tmp_path_factory):
    healthy, flaky = FakeVLLM("ok", model="m").start(), FakeVLLM("flaky", model="m").start()
    flaky.fail_every = 5  # 20% of its requests fail
    receiver = WebhookReceiver().__enter__()

    def upstream(fake) -> dict:  # no retry: the canary's own failures must show
        return {"replicas": [{"engine": "openai_http", "url": fake.url, "flavor": "vllm", "upstream_model": "m"}],
                "retries": 0}

    config = {"deployments": {"tiny": deployment(tiny_model), "solo": deployment(tiny_model),
                              "canary-ok": upstream(healthy), "canary-bad": upstream(flaky)},
              "gateway": {"usage_flush_interval_s": 0.1}, "cache": {"exact": {"enabled": False}},
              "canary_interval_s": 0.3,
              "monitor": {"alerts": {"anomaly": {"enabled": False}, "webhooks": [
                  {"url": receiver.url, "secret_env": "ALERT_SECRET", "receiver": "ops", "backoff_s": 0.1}]}},
              "experiments": [
                  {"name": "good", "model": "tiny", "mode": "canary", "canary": CANARY,
                   "arms": [{"name": "champion", "deployment": "tiny"}, {"name": "canary", "deployment": "canary-ok"}]},
                  {"name": "bad", "model": "solo", "mode": "canary", "canary": CANARY,
                   "arms": [{"name": "champion", "deployment": "solo"}, {"name": "canary", "deployment": "canary-bad"}]}]}
    env = {"SHIPYARD_ADMIN_KEY": ADMIN_KEY, "ALERT_SECRET": "webhook-secret-0123456789abcdef"}
    with ServerProcess(config, tmp_path_factory.mktemp("canary"), env=env) as proc:
        proc.wait_for("/ready", 200)
        yield proc, receiver
    receiver.__exit__()
    healthy.stop()
    flaky.stop()


def _drive(proc, model: str, name: str, done, limit: int = 600) -> list[int]:
    """Requests from distinct users until `done(status)` holds; the status codes seen."""
    admin = AdminClient(proc.base_url)
    codes = []
    for i in range(limit):
        answer = httpx.post(f"{proc.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {ADMIN_KEY}"},
                            timeout=60, json={"model": model, "user": f"{name}-{i}", "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "hi"}]})
        codes.append(answer.status_code)
        if i % 5 == 4 and done(admin.get(f"/admin/experiments/{name}").json()):
            return codes
    raise AssertionError(f"{name} never finished: {admin.get(f'/admin/experiments/{name}').json()}")


def test_a_canary_failing_a_fifth_of_its_requests_is_rolled_back_at_the_first_step(stack):
    proc, receiver = stack
    codes = _drive(proc, "solo", "bad", lambda s: s["status"] == "rolled_back")
    assert 500 in codes or 502 in codes or 503 in codes  # the canary's failures did happen
    status = AdminClient(proc.base_url).get("/admin/experiments/bad").json()
    kinds = [e["kind"] for e in status["events"]]
    assert kinds == ["created", "rollback"]  # at the first step, exactly once
    rollback = status["events"][-1]["detail"]
    assert rollback["step"] == 0 and rollback["checks"]["error_rate"]["ok"] is False
    assert rollback["requests"][1] >= CANARY["min_requests"]
    assert status["serving_weights"] == {"champion": 1.0, "canary": 0.0}
    until(lambda: any(json.loads(body)["alerts"][0]["labels"].get("transition") == "rollback"
                      for _, body in receiver.accepted), 30, "the rollback never reached the webhook")


def test_a_healthy_canary_is_promoted_through_every_step(stack):
    proc, receiver = stack
    _drive(proc, "tiny", "good", lambda s: s["status"] == "promoted")
    status = AdminClient(proc.base_url).get("/admin/experiments/good").json()
    kinds = [e["kind"] for e in status["events"]]
    assert kinds == ["created", "step", "promote"]  # 30% → 60% → everything, each once
    assert [e["detail"].get("weight") for e in status["events"] if e["kind"] == "step"] == [0.6]
    assert status["serving_weights"] == {"champion": 0.0, "canary": 1.0}
    until(lambda: any(json.loads(body)["alerts"][0]["labels"].get("transition") == "promote"
                      for _, body in receiver.accepted), 30, "the promotion never reached the webhook")
