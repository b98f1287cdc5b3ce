"""Replicas behind the full gateway: balancing, tier pools, faults, breakers and fallback chains.

The upstreams are fakes replaying vLLM's wire format (tests/fake_upstream.py), plus a real
Shipyard worker process; the gateway is a real `shipyard serve` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from conftest import ServerProcess, free_port
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient, call

WORKER_TOKEN = "routing-worker-token-0123456789"


def _replica(fake: FakeVLLM, **fields) -> dict:
    return {"engine": "openai_http", "url": fake.url, "flavor": "vllm", "upstream_model": "m", "name": fake.name,
            "first_token_timeout_s": 1, "idle_timeout_s": 2, "poll_interval_s": 0.2, **fields}


@pytest.fixture(scope="module")
def fakes():
    names = ["a", "b", "c", "slow", "fast", "shared", "premium", "primary", "backup", "stored", "lone", "dying"]
    started = {name: FakeVLLM(name).start() for name in names}
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture(scope="module")
def worker(tiny_model, tmp_path_factory):
    port = free_port()
    workdir = tmp_path_factory.mktemp("routing-worker")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHIPYARD_WORKER_TOKEN": WORKER_TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "worker", "--model", str(tiny_model),
                             "--served-model-name", "tiny", "--port", str(port), "--num-threads", "1"],
                            stdout=open(workdir / "worker.log", "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (workdir / "worker.log").read_text()
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def gateway(fakes, worker, tmp_path_factory):
    closed_port = free_port()
    routed = {"retries": 2, "first_token_timeout_s": 10, "breaker": {"failures": 2, "window_s": 60, "cooldown_s": 1.5}}
    deployments = {
        "m": {**routed, "balancer": "round_robin", "replicas": [_replica(fakes[n]) for n in "abc"]},
        "lor": {**routed, "balancer": "least_outstanding",
                "replicas": [_replica(fakes["slow"], first_token_timeout_s=5), _replica(fakes["fast"])]},
        "tiered": {**routed, "replicas": [_replica(fakes["shared"]), _replica(fakes["premium"], min_tier=50)]},
        "refusing": {**routed, "replicas": [
            {"engine": "openai_http", "url": f"http://127.0.0.1:{closed_port}", "flavor": "vllm", "name": "gone",
             "upstream_model": "m", "poll_interval_s": 60},
            _replica(fakes["lone"])]},
        "chain": {**routed, "replicas": [_replica(fakes["primary"])], "fallback": ["backup"]},
        "backup": {"engine": "openai_http", "url": fakes["backup"].url, "flavor": "vllm", "upstream_model": "m"},
        "stored": {**routed, "replicas": [_replica(fakes["stored"])], "response_store": True},
        "dying": {**routed, "replicas": [_replica(fakes["dying"])]},
        "tiny-remote": {"replicas": [{"engine": "openai_http", "url": worker, "flavor": "shipyard",
                                      "upstream_model": "tiny", "api_key_env": "WORKER_TOKEN"}]},
    }
    # routing is what is tested here: every request must reach a replica, so no exact cache
    config = {"deployments": deployments, "gateway": {"usage_flush_interval_s": 0.1},
              "cache": {"exact": {"enabled": False}}}
    with ServerProcess(config, tmp_path_factory.mktemp("routing"),
                       env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY, "WORKER_TOKEN": WORKER_TOKEN}) as proc:
        yield proc


def _complete(gateway, model: str, key: str = ADMIN_KEY, **fields) -> httpx.Response:
    body = {"model": model, "prompt": "hello", "max_tokens": 3, "temperature": 0, **fields}
    return call(gateway.base_url, key, "POST", "/v1/completions", json=body)


def _counters(gateway, deployment: str) -> dict:
    listing = AdminClient(gateway.base_url).get("/admin/deployments").json()["data"]
    return next(d for d in listing if d["name"] == deployment)["counters"]


def _reset(*fakes: FakeVLLM) -> None:
    for fake in fakes:
        fake.mode, fake.served, fake.requests[:] = "ok", 0, []


def test_round_robin_spreads_evenly(gateway, fakes):
    _reset(*(fakes[n] for n in "abc"))
    for _ in range(30):
        assert _complete(gateway, "m").status_code == 200
    served = [fakes[n].served for n in "abc"]
    assert sum(served) == 30 and max(served) - min(served) <= 1, served


def test_least_outstanding_sends_new_work_to_the_idle_replica(gateway, fakes):
    import concurrent.futures

    slow, fast = fakes["slow"], fakes["fast"]
    _reset(slow, fast)
    slow.mode, slow.delay_s = "slow", 2.0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        background = [pool.submit(_complete, gateway, "lor") for _ in range(2)]  # one lands on each
        time.sleep(0.5)
        for _ in range(5):
            assert _complete(gateway, "lor").status_code == 200
        assert all(f.result().status_code == 200 for f in background)
    assert len(slow.requests) == 1 and len(fast.requests) == 6


def test_tier_routing_keeps_premium_keys_off_the_shared_pool(gateway, fakes):
    shared, premium = fakes["shared"], fakes["premium"]
    _reset(shared, premium)
    admin = AdminClient(gateway.base_url)
    tenant = admin.tenant("tiers")
    gold, basic = admin.key(tenant, tier=60)["key"], admin.key(tenant, tier=0)["key"]
    # Counted by the requests each replica received (recorded before it answers): `served` is
    # counted after the last byte, which a fast client can read first.
    for _ in range(6):
        assert _complete(gateway, "tiered", gold).status_code == 200
    assert len(premium.requests) == 6 and len(shared.requests) == 0
    for _ in range(6):
        assert _complete(gateway, "tiered", basic).status_code == 200
    assert len(premium.requests) == 6 and len(shared.requests) == 6


def test_a_failing_replica_is_retried_around_and_its_breaker_opens_then_closes(gateway, fakes):
    a, b, c = (fakes[n] for n in "abc")
    _reset(a, b, c)
    b.mode = "error500"
    statuses = [_complete(gateway, "m").status_code for _ in range(12)]
    assert statuses == [200] * 12
    assert len(b.requests) == 2  # two failures opened its breaker: no more traffic
    b.mode = "ok"
    time.sleep(1.7)  # past the cool-down: one probe, which succeeds, closes it
    for _ in range(9):
        assert _complete(gateway, "m").status_code == 200
    assert b.served >= 2


def test_a_hanging_replica_costs_one_first_token_timeout(gateway, fakes):
    a, b, c = (fakes[n] for n in "abc")
    _reset(a, b, c)
    c.mode = "hang"
    retries = _counters(gateway, "m")["retries"]
    statuses = [_complete(gateway, "m").status_code for _ in range(6)]
    assert statuses == [200] * 6  # a hang never cut would have failed the client (its timeout)
    # each request that hung on c was cut at the first-token timeout and retried once, elsewhere
    assert len(c.requests) >= 1 and _counters(gateway, "m")["retries"] - retries == len(c.requests)
    _reset(c)


def test_a_replica_refusing_connections(gateway, fakes):
    _reset(fakes["lone"])
    assert [_complete(gateway, "refusing").status_code for _ in range(5)] == [200] * 5
    assert fakes["lone"].served == 5


def test_a_replica_that_dies_mid_stream(gateway, fakes):
    _reset(fakes["dying"])
    fakes["dying"].mode = "die_mid_stream"
    body = {"model": "dying", "prompt": "x", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/v1/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {ADMIN_KEY}"}) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "upstream_error"
    sent = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2])
    assert sent == "dying-0 dying-1 "  # what arrived before the break went out; then the error
    assert _complete(gateway, "dying").status_code == 502  # non-streamed: a clean bad-gateway


def test_all_replicas_down_falls_back_to_the_backup_model(gateway, fakes):
    primary, backup = fakes["primary"], fakes["backup"]
    _reset(primary, backup)
    primary.mode = "error500"
    response = _complete(gateway, "chain")
    assert response.status_code == 200
    assert response.headers["x-shipyard-fallback"] == "backup"
    assert response.json()["choices"][0]["text"].startswith("backup-0")
    gateway.wait_for_log("served_by=fallback:backup")
    metrics = call(gateway.base_url, ADMIN_KEY, "GET", "/metrics").text
    assert 'shipyard:routing_fallbacks_total{model_name="chain"} 1.0' in metrics
    assert 'shipyard:replica_up{model_name="chain",replica="primary"} 1.0' in metrics


def test_all_down_with_only_the_response_store_left(gateway, fakes):
    stored = fakes["stored"]
    _reset(stored)
    first = _complete(gateway, "stored", prompt="remember me")
    assert first.status_code == 200 and "x-shipyard-fallback" not in first.headers
    stored.mode = "error500"
    again = _complete(gateway, "stored", prompt="remember me")
    assert again.status_code == 200 and again.headers["x-shipyard-fallback"] == "response-store"
    assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
    # another tenant asking the same never gets it, and a new prompt has nothing to fall back on
    admin = AdminClient(gateway.base_url)
    other = admin.key(admin.tenant("store-other"))["key"]
    # (502 while the replica's breaker is closed, 503 "no healthy replica" once it has opened)
    assert _complete(gateway, "stored", other, prompt="remember me").status_code in (502, 503)
    failed = _complete(gateway, "stored", prompt="never asked")
    assert failed.status_code in (502, 503) and "request id" in failed.json()["error"]["message"]


def test_no_healthy_replica_is_a_503_with_retry_after(gateway, fakes):
    lone = fakes["lone"]
    lone.mode = "down"  # its health check fails; the other replica of "refusing" refuses connections
    time.sleep(0.6)
    no_replica = _counters(gateway, "refusing")["no_replica"]
    response = _complete(gateway, "refusing")
    assert response.status_code == 503 and response.headers["retry-after"]
    assert _counters(gateway, "refusing")["no_replica"] == no_replica + 1  # refused for want of a replica
    _reset(lone)


def test_a_real_worker_upstream_through_the_full_gateway(gateway):
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=ADMIN_KEY, max_retries=0) as client:
        reply = client.chat.completions.create(model="tiny-remote", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 4 and reply.choices[0].message.content
        chunks = list(client.completions.create(model="tiny-remote", prompt="def", max_tokens=3, stream=True,
                                                extra_body={"ignore_eos": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices)
        with pytest.raises(openai.BadRequestError):  # the worker's own 400, passed through
            client.completions.create(model="tiny-remote", prompt="x", max_tokens=10_000)
