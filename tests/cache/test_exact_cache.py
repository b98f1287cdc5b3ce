"""The exact prompt cache through the full gateway, in front of a fake vLLM that counts what it
is asked: a repeat never reaches the engine (streamed or not, with the same chunks), and every
thing that must change the answer (tenant, parameters, model, time, an admin) does."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from conftest import ServerProcess
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient, call

MODEL = "cached"


def _config(fake: FakeVLLM, **cache) -> dict:
    return {"deployments": {MODEL: {"engine": "openai_http", "url": fake.url, "flavor": "vllm", "upstream_model": "m",
                                    "max_model_len": 2048}},
            "gateway": {"usage_flush_interval_s": 0.1, "prices": {"default": {"prompt": 1.0, "completion": 2.0}}},
            "cache": {"exact": cache} if cache else {}}


@pytest.fixture(scope="module")
def fake():
    upstream = FakeVLLM("up").start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory):
    with ServerProcess(_config(fake, ttl_s=2.0), tmp_path_factory.mktemp("exact"),
                       env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        admin = AdminClient(proc.base_url)
        proc.keys = {name: admin.key(admin.tenant(name))["key"] for name in ("acme", "globex")}
        proc.tenant_admin = admin.key(admin.tenant("initech"), role="tenant-admin")["key"]
        proc.metered = admin.key(admin.tenant("metered", tpm=100))["key"]
        yield proc


def _chat(base_url: str, key: str, content: str = "What is a list?", headers=None, **fields) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0,
            **fields}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}", **(headers or {})})


def test_a_repeat_is_answered_without_the_engine_streamed_or_not(gateway, fake):
    key = gateway.keys["acme"]
    before = len(fake.requests)
    first = _chat(gateway.base_url, key, "Tell me about tuples")
    assert first.status_code == 200 and first.headers["x-shipyard-cache"] == "miss"
    second = _chat(gateway.base_url, key, "Tell me about tuples")
    assert second.headers["x-shipyard-cache"] == "hit"
    assert len(fake.requests) == before + 1  # the engine saw one request
    a, b = first.json(), second.json()
    assert b["choices"] == a["choices"] and b["id"] != a["id"]
    assert b["usage"]["prompt_tokens"] == a["usage"]["prompt_tokens"]
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] == a["usage"]["prompt_tokens"]

    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me about tuples"}], max_tokens=4, temperature=0,
            stream=True, stream_options={"include_usage": True})
        assert raw.headers["x-shipyard-cache"] == "hit"
        chunks = list(raw.parse())
    assert len(fake.requests) == before + 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        a["choices"][0]["message"]["content"]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.completion_tokens == 4

    # and the other way round: a streamed miss, then a non-streamed hit
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0) as client:
        streamed = list(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Sets?"}], max_tokens=4, temperature=0, stream=True))
    again = _chat(gateway.base_url, key, "Sets?")
    assert again.headers["x-shipyard-cache"] == "hit" and len(fake.requests) == before + 2
    assert again.json()["choices"][0]["message"]["content"] == "".join(
        c.choices[0].delta.content or "" for c in streamed if c.choices)


def test_other_tenants_parameters_and_sampled_requests_miss(gateway, fake):
    acme, globex = gateway.keys["acme"], gateway.keys["globex"]
    assert _chat(gateway.base_url, acme, "Dicts?").headers["x-shipyard-cache"] == "miss"
    assert _chat(gateway.base_url, acme, "Dicts?").headers["x-shipyard-cache"] == "hit"
    assert _chat(gateway.base_url, globex, "Dicts?").headers["x-shipyard-cache"] == "miss"  # never shared
    assert _chat(gateway.base_url, acme, "Dicts?", max_tokens=3).headers["x-shipyard-cache"] == "miss"
    assert _chat(gateway.base_url, acme, "Dicts?", stop=["x"]).headers["x-shipyard-cache"] == "miss"
    # sampled without a seed: not deterministic, never reused; with a seed it is
    before = len(fake.requests)
    for _ in range(2):
        assert _chat(gateway.base_url, acme, "Dicts?", temperature=1.0).headers["x-shipyard-cache"] == "bypass"
    assert len(fake.requests) == before + 2
    assert _chat(gateway.base_url, acme, "Dicts?", temperature=1.0, seed=5).headers["x-shipyard-cache"] == "miss"
    assert _chat(gateway.base_url, acme, "Dicts?", temperature=1.0, seed=5).headers["x-shipyard-cache"] == "hit"


def test_bypass_and_refresh_per_request(gateway, fake):
    key = gateway.keys["acme"]
    _chat(gateway.base_url, key, "Loops?")
    before = len(fake.requests)
    skipped = _chat(gateway.base_url, key, "Loops?", cache={"no-store": True})
    assert skipped.headers["x-shipyard-cache"] == "bypass" and len(fake.requests) == before + 1
    refreshed = _chat(gateway.base_url, key, "Loops?", headers={"cache-control": "no-cache"})
    assert refreshed.headers["x-shipyard-cache"] == "bypass" and len(fake.requests) == before + 2
    assert _chat(gateway.base_url, key, "Loops?").headers["x-shipyard-cache"] == "hit"
    bad = _chat(gateway.base_url, key, "Loops?", cache={"no-cach": True})
    assert bad.status_code == 400 and bad.json()["error"]["param"]


def test_entries_expire(gateway):
    key = gateway.keys["acme"]
    assert _chat(gateway.base_url, key, "Expiring?").headers["x-shipyard-cache"] == "miss"
    assert _chat(gateway.base_url, key, "Expiring?").headers["x-shipyard-cache"] == "hit"
    time.sleep(2.2)  # ttl_s is 2 in this server
    assert _chat(gateway.base_url, key, "Expiring?").headers["x-shipyard-cache"] == "miss"


def test_admin_invalidation_by_deployment_and_tenant(gateway):
    acme, globex = gateway.keys["acme"], gateway.keys["globex"]
    for key in (acme, globex):
        _chat(gateway.base_url, key, "Modules?")
        assert _chat(gateway.base_url, key, "Modules?").headers["x-shipyard-cache"] == "hit"
    tenants = {t["name"]: t["id"] for t in call(gateway.base_url, ADMIN_KEY, "GET", "/admin/tenants").json()["data"]}
    cleared = call(gateway.base_url, ADMIN_KEY, "DELETE", f"/admin/cache?tenant_id={tenants['acme']}")
    assert cleared.status_code == 200 and cleared.json()["deployments"] == [MODEL]
    assert _chat(gateway.base_url, acme, "Modules?").headers["x-shipyard-cache"] == "miss"
    assert _chat(gateway.base_url, globex, "Modules?").headers["x-shipyard-cache"] == "hit"
    assert call(gateway.base_url, ADMIN_KEY, "DELETE", f"/admin/cache?deployment={MODEL}").status_code == 200
    assert _chat(gateway.base_url, globex, "Modules?").headers["x-shipyard-cache"] == "miss"
    # a tenant-admin clears only its own tenant; developers not at all; unknown deployments 404
    own = call(gateway.base_url, gateway.tenant_admin, "DELETE", f"/admin/cache?tenant_id={tenants['acme']}")
    assert own.status_code == 403
    assert call(gateway.base_url, gateway.tenant_admin, "DELETE", "/admin/cache").status_code == 200
    assert call(gateway.base_url, acme, "DELETE", "/admin/cache").status_code == 403
    assert call(gateway.base_url, ADMIN_KEY, "DELETE", "/admin/cache?deployment=nope").status_code == 404
    assert call(gateway.base_url, ADMIN_KEY, "DELETE", "/admin/cache").status_code == 400


def test_hits_are_metered_priced_and_counted(gateway):
    key = gateway.keys["globex"]
    _chat(gateway.base_url, key, "Priced?")
    _chat(gateway.base_url, key, "Priced?")
    time.sleep(0.5)  # the usage writer's batch
    usage = call(gateway.base_url, ADMIN_KEY, "GET", "/admin/usage?group_by=tenant_id").json()["data"]
    globex = next(row for row in usage if row["cache_hits"] and row["requests"] > row["cache_hits"])
    assert globex["cached_tokens"] > 0
    metrics = httpx.get(f"{gateway.base_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    assert f'shipyard:cache_hits_total{{layer="exact",model_name="{MODEL}"}}' in metrics
    assert 'shipyard:cache_hit_rate{layer="exact"' in metrics


def test_a_redis_cache_is_shared_by_two_gateways(fake, redis_server, tmp_path):
    config = {**_config(fake), "gateway": {"redis_url": redis_server.url}}
    env = {"SHIPYARD_ADMIN_KEY": ADMIN_KEY}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ServerProcess(config, tmp_path / "a", env=env) as a, ServerProcess(config, tmp_path / "b", env=env) as b:
        before = len(fake.requests)
        assert _chat(a.base_url, ADMIN_KEY, "Shared?").headers["x-shipyard-cache"] == "miss"
        time.sleep(0.1)  # the answer is stored just after the response ends
        assert _chat(b.base_url, ADMIN_KEY, "Shared?").headers["x-shipyard-cache"] == "hit"
        assert len(fake.requests) == before + 1
        assert call(a.base_url, ADMIN_KEY, "DELETE", f"/admin/cache?deployment={MODEL}").status_code == 200
        assert _chat(b.base_url, ADMIN_KEY, "Shared?").headers["x-shipyard-cache"] == "miss"  # everywhere at once


def test_hits_do_not_spend_the_token_budget(gateway):
    """tpm 100: a miss spends its prompt and completion; ten hits of the same request spend none."""
    for _ in range(11):
        response = _chat(gateway.base_url, gateway.metered, "Counted once?")
        assert response.status_code == 200, response.text
    assert response.headers["x-shipyard-cache"] == "hit"
    assert int(response.headers["x-ratelimit-remaining-tokens"]) > 50
