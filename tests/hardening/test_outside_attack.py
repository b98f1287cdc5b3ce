"""What an outside attack on the new surfaces found (the attack issue), each held shut: the KV
prefix cache and prefix routing partitioned per tenant; the dashboard's forms refuse other origins,
sign-out ends the session everywhere and the sign-in form reads at most 4 KB; feedback is
rate-limited, one vote per key, and system score names are the system's; admin inputs are finite
and in range, and a stored row that no longer parses breaks no read; launching replicas over the
API is off unless switched on."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from conftest import MODEL_NAME, ServerProcess, deployment
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient, call

SECRET_PROMPT = ("The vault code of the Acme account is 4812. Never tell it to anyone, whatever they say. " * 3)


@pytest.fixture(scope="module")
def upstream():
    fake = FakeVLLM("attack", model="m").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def site(tiny_model, tmp_path_factory, upstream):
    config = {"deployments": {MODEL_NAME: deployment(tiny_model, prefix_block_size=4),
                              "routed": {"replicas": [{"engine": "openai_http", "url": upstream.url, "flavor": "vllm",
                                                       "upstream_model": "m"}]}},
              "gateway": {"usage_flush_interval_s": 0.1}, "feedback": {"max_per_minute": 5}}
    with ServerProcess(config, tmp_path_factory.mktemp("attack"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


@pytest.fixture(scope="module")
def tenants(site):
    admin = AdminClient(site.base_url)
    return {name: admin.key(admin.tenant(f"attack-{name}"))["key"] for name in ("a", "b")}


def _cached_tokens(site, key: str, prompt: str) -> int:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 1, "temperature": 1.0}  # sampled: no answer cache
    response = call(site.base_url, key, "POST", "/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


# ---------------------------------------------------------------- 1. the KV prefix side channel
def test_one_tenant_never_reuses_another_tenants_prefix_blocks(site, tenants):
    _cached_tokens(site, tenants["a"], SECRET_PROMPT)
    assert _cached_tokens(site, tenants["a"], SECRET_PROMPT) > 0  # its own blocks: reused
    assert _cached_tokens(site, tenants["b"], SECRET_PROMPT) == 0  # the same prompt from B: nothing known
    assert _cached_tokens(site, tenants["b"], SECRET_PROMPT) > 0  # B's own blocks, from now on


def test_a_vllm_upstream_gets_each_tenants_own_cache_salt(site, tenants, upstream):
    for key in (tenants["a"], tenants["b"], tenants["a"]):
        body = {"model": "routed", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 1}
        assert call(site.base_url, key, "POST", "/v1/chat/completions", json=body).status_code == 200
    salts = [r.get("cache_salt") for r in upstream.requests[-3:]]
    assert all(salts) and salts[0] == salts[2] != salts[1]
    assert not any("attack" in salt for salt in salts)  # hashed: the tenant is not named upstream


def test_prefix_routing_is_partitioned_per_tenant():
    from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams
    from shipyard.routing.affinity import prefix_blocks

    def blocks(scope: str):
        return prefix_blocks(GenerationRequest("r", Prompt(text=SECRET_PROMPT), SamplingParams(), scope=scope))

    assert blocks("tenant-a") == blocks("tenant-a")
    assert not set(blocks("tenant-a")) & set(blocks("tenant-b"))


# ---------------------------------------------------------------- 2. the dashboard
def _sign_in(site, key: str) -> str:
    signed = httpx.post(f"{site.base_url}/dashboard/login", data={"api_key": key}, timeout=30)
    assert signed.status_code == 303, signed.text
    return signed.cookies["shipyard_dashboard"]


def test_dashboard_forms_refuse_other_origins(site):
    evil = {"origin": "http://evil.example"}
    other_port = {"origin": f"http://127.0.0.1:{site.port + 1}"}  # same site, another origin
    for headers in (evil, other_port, {"sec-fetch-site": "cross-site"}):
        login = httpx.post(f"{site.base_url}/dashboard/login", data={"api_key": ADMIN_KEY}, headers=headers, timeout=30)
        assert login.status_code == 403 and "shipyard_dashboard" not in login.headers.get("set-cookie", "")
    cookie = {"shipyard_dashboard": _sign_in(site, ADMIN_KEY)}
    forged = httpx.post(f"{site.base_url}/dashboard/review/1", data={"action": "claim"}, headers=evil,
                        cookies=cookie, timeout=30)
    assert forged.status_code == 403
    own = httpx.post(f"{site.base_url}/dashboard/review/1", data={"action": "claim"}, cookies=cookie, timeout=30,
                     headers={"origin": site.base_url, "sec-fetch-site": "same-origin"})
    assert own.status_code == 404  # taken, and the item is simply not there


def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(site):
    session = _sign_in(site, ADMIN_KEY)
    page = httpx.get(f"{site.base_url}/dashboard", cookies={"shipyard_dashboard": session}, timeout=30)
    assert "Sign in" not in page.text
    out = httpx.post(f"{site.base_url}/dashboard/logout", cookies={"shipyard_dashboard": session}, timeout=30)
    assert out.status_code == 303
    after = httpx.get(f"{site.base_url}/dashboard", cookies={"shipyard_dashboard": session}, timeout=30)
    assert "Sign in" in after.text


def test_the_sign_in_form_never_holds_a_large_body(site):
    """A declared 1.9 MB body is refused before a byte of it is read (no stalled upload holds memory)."""
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as conn:
        conn.sendall(b"POST /dashboard/login HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                     b"content-type: application/x-www-form-urlencoded\r\ncontent-length: 1900000\r\n\r\napi_key=")
        answer = conn.recv(200)  # nothing more is sent: the old code waited for the body here
    assert answer.startswith(b"HTTP/1.1 413")
    chunked = httpx.post(f"{site.base_url}/dashboard/login", content=iter([b"api_key=" + b"x" * 8000]),
                         headers={"content-type": "application/x-www-form-urlencoded"}, timeout=30)
    assert chunked.status_code == 413


# ---------------------------------------------------------------- 3. feedback and scores
def _response_id(site, key: str) -> str:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    response = call(site.base_url, key, "POST", "/v1/chat/completions", json=body)
    assert response.status_code == 200
    return response.json()["id"]


def test_one_vote_per_key_and_response_and_a_rate_limit(site):
    admin = AdminClient(site.base_url)
    key = admin.key(admin.tenant("voters"))["key"]
    response_id = _response_id(site, key)
    statuses = []
    for attempt in range(6):
        vote = {"response_id": response_id, "metric": "thumbs", "value": attempt % 2 == 0, "comment": "c" * 20_000}
        statuses.append(call(site.base_url, key, "POST", "/v1/feedback", json=vote).status_code)
    assert statuses[:5] == [200] * 5 and statuses[5] == 429  # feedback.max_per_minute: 5
    until_stored = time.monotonic() + 10
    rows = []
    while time.monotonic() < until_stored and not rows:
        rows = admin.get("/admin/scores", params={"request_id": response_id, "name": "feedback.thumbs"}).json()["data"]
    assert len(rows) == 1 and rows[0]["value"] is True  # the key's last vote stands, alone


@pytest.mark.parametrize("name", ["faithfulness", "consistency_cosine", "mean_logprob", "shadow.cosine",
                                  "eval.exact_match", "review.verdict", "replay.cosine", "feedback.thumbs"])
def test_system_score_names_are_the_systems(site, name):
    admin = AdminClient(site.base_url)
    key = admin.key(admin.tenant(f"scorer-{name}"))["key"]
    response_id = _response_id(site, key)
    time.sleep(0.3)  # its usage row is written
    refused = call(site.base_url, key, "POST", "/admin/scores",
                   json=[{"request_id": response_id, "name": name, "value": 0.0}])
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "system_score"
    own = call(site.base_url, key, "POST", "/admin/scores",
               json=[{"request_id": response_id, "name": "my.relevance", "value": 0.5}])
    assert own.status_code == 201, own.text


async def test_one_tenants_feedback_alone_moves_no_global_trigger(tmp_path):
    from datetime import datetime, timezone

    from experiments_support import Clock
    from shipyard.experiments.trigger_spec import RetrainingConfig
    from shipyard.experiments.triggers import RetrainingTriggers
    from shipyard.store.db import Database
    from shipyard.store.models import Score

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await db.migrate()
    clock = Clock(datetime.now(timezone.utc).timestamp())
    config = RetrainingConfig.model_validate({"interval_s": 60, "triggers": [
        {"name": "votes", "feedback_count": {"at_least": 3}, "action": {"command": {"argv": ["true"]}}},
        {"name": "thumbs", "metric": {"score": "feedback.thumbs", "below": 0.5, "min_samples": 3},
         "action": {"command": {"argv": ["true"]}}}]})

    async def vote(tenant: str, n: int) -> None:
        async with db.session() as session:
            session.add_all([Score(request_id=f"{tenant}-{i}", tenant_id=tenant, deployment="chat",
                                   name="feedback.thumbs", kind="boolean", boolean=False, source="feedback",
                                   voter=f"key-{tenant}-{i}", created_at=datetime.now(timezone.utc))
                             for i in range(n)])
            await session.commit()

    triggers = RetrainingTriggers(config, db, clock=clock, feedback_min_tenants=2)

    async def fired() -> set[str]:
        clock.now += 60
        rows = [await triggers.evaluate(spec) for spec in config.triggers]
        return {row.trigger for row in rows if row.outcome == "fired"}

    try:
        await vote("mallory", 30)
        assert await fired() == set()  # one tenant's 30 thumbs-down: no global trigger moves
        await vote("alice", 1)
        assert await fired() == {"votes", "thumbs"}
    finally:
        await triggers.stop()
        await db.close()


async def test_one_tenants_thumbs_alone_move_no_canary_every_tenant_shares(tmp_path):
    from datetime import datetime, timedelta, timezone

    from shipyard.experiments.canary import CanaryController
    from shipyard.experiments.spec import ExperimentSpec
    from shipyard.store.db import Database
    from shipyard.store.models import Score, UsageRecord

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await db.migrate()
    spec = ExperimentSpec.model_validate(_experiment(name="shared"))
    now = datetime.now(timezone.utc)

    async def votes(tenant: str, arm: str, up: bool, n: int) -> None:
        async with db.session() as session:
            for i in range(n):
                request_id = f"{tenant}-{arm}-{i}"
                session.add(UsageRecord(request_id=request_id, tenant_id=tenant, key_id=f"k-{tenant}", model="m",
                                        status=200, variant=f"shared/{arm}", created_at=now))
                session.add(Score(request_id=request_id, tenant_id=tenant, deployment="m", name="feedback.thumbs",
                                  kind="boolean", boolean=up, source="feedback", voter=f"k-{tenant}-{i}",
                                  created_at=now))
            await session.commit()

    canary = CanaryController(None, db, feedback_min_tenants=2)
    await votes("mallory", "champion", True, 30)
    await votes("mallory", "canary", False, 30)
    assert await canary._thumbs(spec, now - timedelta(minutes=1)) == ([], [])  # no thumbs check at all
    await votes("alice", "canary", False, 1)
    ups, downs = await canary._thumbs(spec, now - timedelta(minutes=1))
    assert len(ups) == 30 and len(downs) == 31
    tenant_only = spec.model_copy(update={"tenant_id": "mallory"})  # its own experiment: its votes count
    assert len((await CanaryController(None, db, feedback_min_tenants=2)._thumbs(
        tenant_only, now - timedelta(minutes=1)))[0]) == 30
    await db.close()


# ---------------------------------------------------------------- 4. admin inputs
RAW_BAD_BODIES = [
    ("/admin/alerts/rules", '{"name": "nan-rule", "metric": "error_rate", "warning": NaN}'),
    ("/admin/alerts/rules", '{"name": "inf-rule", "metric": "error_rate", "alert": Infinity}'),
    ("/admin/alerts/rules", '{"name": "big-rule", "metric": "error_rate", "alert": -1e999}'),
    ("/admin/experiments", '{"name": "inf", "model": "%s", "arms": [{"name": "a", "deployment": "%s", "weight": '
                           'Infinity}, {"name": "b", "deployment": "routed"}]}' % (MODEL_NAME, MODEL_NAME)),
]


@pytest.mark.parametrize("path, raw", RAW_BAD_BODIES, ids=lambda v: v[:30])
def test_non_finite_numbers_are_400s_and_reads_stay_whole(site, path, raw):
    response = httpx.post(f"{site.base_url}{path}", content=raw.encode(), timeout=30,
                          headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert AdminClient(site.base_url).get(path).status_code == 200


def _experiment(**overrides) -> dict:
    return {"name": "bounds", "model": MODEL_NAME, "mode": "canary",
            "arms": [{"name": "champion", "deployment": MODEL_NAME}, {"name": "canary", "deployment": "routed"}],
            **overrides}


@pytest.mark.parametrize("overrides", [
    {"canary": {"steps": [-0.5, 7]}}, {"canary": {"steps": [0.5, 0.2]}}, {"canary": {"steps": []}},
    {"shadow": {"max_tokens": 10**12}}, {"shadow": {"daily_cost_usd": 1e300}}, {"shadow": {"daily_tokens": 10**30}},
], ids=str)
def test_experiment_numbers_out_of_range_are_400s(site, overrides):
    admin = AdminClient(site.base_url)
    response = admin.post("/admin/experiments", json=_experiment(**overrides))
    assert response.status_code == 400, response.text
    assert admin.get("/admin/experiments").status_code == 200


def test_an_out_of_range_item_id_is_a_400(site):
    for path in ("/admin/review/99999999999999999999999", "/admin/review/0", "/admin/review/-5"):
        assert AdminClient(site.base_url).get(path).status_code == 400


async def test_a_stored_row_that_no_longer_parses_breaks_no_read(tmp_path):
    from datetime import datetime, timezone

    from shipyard.experiments.registry import ExperimentRegistry
    from shipyard.monitor.alert_store import AlertStore
    from shipyard.store.db import Database
    from shipyard.store.models import AlertRuleRow, ExperimentRow

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await db.migrate()
    now = datetime.now(timezone.utc)
    good = _experiment(name="good")
    bad = _experiment(name="bad", canary={"steps": [float("nan")]})
    async with db.session() as session:
        for spec in (good, bad):
            session.add(ExperimentRow(name=spec["name"], spec=spec, version=1, created_at=now, updated_at=now))
        session.add(AlertRuleRow(name="bad", body={"name": "bad", "metric": "error_rate", "alert": float("inf")},
                                 created_at=now))
        session.add(AlertRuleRow(name="good", body={"name": "good", "metric": "error_rate", "alert": 0.5},
                                 created_at=now))
        await session.commit()
    registry = ExperimentRegistry(db, [], lambda: {MODEL_NAME, "routed"})
    await registry.refresh()  # what every start and every refresh does
    assert set(registry.specs) == {"good"}
    assert [rule.name for rule in await AlertStore(db).rules()] == ["good"]
    await db.close()


# ---------------------------------------------------------------- 5. replicas that run commands
def test_launching_replicas_over_the_api_is_off_by_default(site):
    admin = AdminClient(site.base_url)
    spec = {"engine": "launch", "kind": "worker", "model": "/tmp", "executable": "/bin/bash",
            "env": {"BASH_ENV": "$(id > /tmp/owned)"}}
    refused = admin.post("/admin/deployments/routed/replicas", json=spec)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "api_launch_disabled"
