"""Shadow experiments through a real server, the challenger a fake vLLM: the user sees only the
champion's answer; the challenger receives the sampled share of the requests; a slow or failing
challenger changes nothing for the user; shadow tokens are in no tenant's usage; pairs are
compared into scores; the daily cap stops the copies and says why, once."""

from __future__ import annotations

import math
import time

import httpx
import pytest

from conftest import ServerProcess, deployment, until
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient, call


@pytest.fixture(scope="module")
def upstream():
    fake = FakeVLLM("shadow", model="m", tokens=4).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(tiny_model, upstream, tmp_path_factory):
    shadow_dep = {"engine": "openai_http", "url": upstream.url, "flavor": "vllm", "upstream_model": "m"}
    config = {"deployments": {"tiny": deployment(tiny_model), "solo": deployment(tiny_model), "shadow-dep": shadow_dep},
              "gateway": {"usage_flush_interval_s": 0.1}, "cache": {"exact": {"enabled": False}},
              "experiments": [
                  {"name": "shadowing", "model": "tiny", "mode": "shadow", "shadow": {"sample": 0.5, "max_concurrent": 64,
                                                                              "compare_sample": 1.0},
                   "arms": [{"name": "champion", "deployment": "tiny"}, {"name": "shadow", "deployment": "shadow-dep"}]},
                  {"name": "capped", "model": "solo", "mode": "shadow", "shadow": {"daily_tokens": 30},
                   "arms": [{"name": "champion", "deployment": "solo"}, {"name": "shadow", "deployment": "shadow-dep"}]}]}
    with ServerProcess(config, tmp_path_factory.mktemp("shadow"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        proc.wait_for("/ready", 200)
        yield proc


@pytest.fixture(scope="module")
def key(server):
    admin = AdminClient(server.base_url)
    return admin.key(admin.tenant("shadowed"))["key"]


def _ask(server, key: str, model: str = "tiny", user: str = "u") -> httpx.Response:
    return call(server.base_url, key, "POST", "/v1/chat/completions",
                json={"model": model, "user": user, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})


def _status(server, name: str) -> dict:
    return AdminClient(server.base_url).get(f"/admin/experiments/{name}").json()


def test_the_sampled_share_is_copied_and_the_user_sees_only_the_champion(server, upstream, key):
    before = len(upstream.requests)
    answers = [_ask(server, key, user=f"user-{i}") for i in range(80)]
    assert all(a.status_code == 200 for a in answers)
    assert all(a.headers["x-shipyard-variant"] == "tiny; experiment=shadowing; arm=champion" for a in answers)
    assert not any("shadow-" in a.json()["choices"][0]["message"]["content"] for a in answers)  # never its text
    until(lambda: _status(server, "shadowing")["shadow"]["copies"] == len(upstream.requests) - before, 30,
          "copies and shadow records disagree")
    copies = len(upstream.requests) - before
    assert abs(copies - 40) <= 4 * math.sqrt(80 * 0.25), copies  # binomial bound around half
    shadow = _status(server, "shadowing")["shadow"]
    assert shadow["answered"] == copies and shadow["tokens"] == copies * (7 + 4)
    scores = AdminClient(server.base_url).get("/admin/scores", params={"name": "shadow.exact_match"}).json()["data"]
    until(lambda: len(AdminClient(server.base_url).get("/admin/scores", params={
        "name": "shadow.length_ratio", "limit": 1000}).json()["data"]) == copies, 60, "pair scores missing")
    scores = AdminClient(server.base_url).get("/admin/scores", params={"name": "shadow.cosine"}).json()["data"]
    assert scores and all(s["deployment"] == "shadow-dep" and -1.0 <= s["value"] <= 1.0001 for s in scores)


def test_shadow_tokens_are_in_no_tenants_usage(server, key):
    usage = AdminClient(server.base_url).get("/admin/usage", params={"group_by": "model"})
    assert usage.status_code == 200, usage.text
    models = {row["model"] for row in usage.json()["data"]}
    assert "tiny" in models and "shadow-dep" not in models  # the champion billed, the challenger never
    assert _status(server, "shadowing")["shadow"]["tokens"] > 0  # though its copies did spend tokens


def test_the_daily_cap_stops_the_copies_and_says_why_once(server, upstream, key):
    for i in range(8):  # each copy is 7 + 4 tokens: the 30-token cap is passed at the third
        assert _ask(server, key, model="solo", user=f"cap-{i}").status_code == 200
        time.sleep(0.3)
    until(lambda: _status(server, "capped")["shadow_capped_day"] is not None, 30, "never capped")
    status = _status(server, "capped")
    copies = status["shadow"]["copies"]
    assert 3 <= copies <= 5 and status["shadow"]["tokens_today"] >= 30
    capped = [e for e in status["events"] if e["kind"] == "shadow_capped"]
    assert len(capped) == 1 and "cap is 30" in capped[0]["detail"]["reason"]
    for i in range(5):
        assert _ask(server, key, model="solo", user=f"after-{i}").status_code == 200
    time.sleep(1)
    assert _status(server, "capped")["shadow"]["copies"] == copies  # no more today


def test_a_slow_or_failing_challenger_changes_nothing_for_the_user(server, upstream, key):
    upstream.mode, upstream.delay_s = "slow", 5.0
    try:
        for i in range(4):
            answered = upstream.served
            assert _ask(server, key, user=f"slow-{i}").status_code == 200
            assert upstream.served == answered  # the user's answer came before the copy's: it never waited on it
    finally:
        upstream.mode, upstream.delay_s = "error500", 0.0
    failed_before, requests_before = _status(server, "shadowing")["shadow"]["failed"], len(upstream.requests)
    try:
        answers = [_ask(server, key, user=f"failing-{i}") for i in range(10)]
        assert all(a.status_code == 200 for a in answers)
        until(lambda: _status(server, "shadowing")["shadow"]["failed"] > failed_before, 30, "no failed copy counted")
        time.sleep(1)
        failed = _status(server, "shadowing")["shadow"]["failed"] - failed_before
        assert len(upstream.requests) - requests_before <= failed  # never retried: one try per copy at most
        metrics = httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"},
                            timeout=30).text
        assert 'shipyard:shadow_requests_total{experiment="shadowing",outcome="failed"}' in metrics
    finally:
        upstream.mode = "ok"
