"""Experiments through a real server: every inference response names what served it
(`x-shipyard-variant`), assignment is sticky per user, usage records carry the arm, feedback lands
in the score store for the caller's own tenant only, and the transitions are refused when they
cannot apply, racing calls included, with each one audited exactly once."""

from __future__ import annotations

import time

import threading

import httpx
import pytest
from openai import OpenAI

from conftest import ServerProcess, deployment, until
from gateway_support import ADMIN_KEY, AdminClient, call

ARMS = [{"name": "champion", "deployment": "tiny", "weight": 1},
        {"name": "challenger", "deployment": "tiny-v2", "weight": 1}]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    config = {"deployments": {"tiny": deployment(tiny_model), "tiny-v2": deployment(tiny_model),
                              "solo": deployment(tiny_model)},
              "gateway": {"usage_flush_interval_s": 0.1}, "cache": {"exact": {"enabled": False}},
              "experiments": [{"name": "rollout", "model": "tiny", "mode": "ab", "unit": "user", "arms": ARMS}]}
    with ServerProcess(config, tmp_path_factory.mktemp("experiments"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        proc.wait_for("/ready", 200)
        yield proc


@pytest.fixture(scope="module")
def keys(server):
    admin = AdminClient(server.base_url)
    mine, theirs = admin.tenant("mine"), admin.tenant("theirs")
    return {"mine": admin.key(mine)["key"], "theirs": admin.key(theirs)["key"]}


def _chat(server, key: str, user: str, model: str = "tiny", stream: bool = False):
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, user=user, max_tokens=3, stream=stream, messages=[{"role": "user", "content": "hi"}])
    if stream:
        chunks = list(raw.parse())
        return raw.headers, chunks[0].id
    return raw.headers, raw.parse().id


def test_every_response_names_what_served_it_and_a_user_stays_on_one_arm(server, keys):
    arms = set()
    for user in (f"user-{i}" for i in range(24)):
        first, _ = _chat(server, keys["mine"], user)
        again, _ = _chat(server, keys["mine"], user, stream=True)
        assert first["x-shipyard-variant"] == again["x-shipyard-variant"]  # sticky, streamed or not
        deployment_name, experiment, arm = first["x-shipyard-variant"].split("; ")
        assert experiment == "experiment=rollout" and deployment_name == {"arm=champion": "tiny",
                                                                          "arm=challenger": "tiny-v2"}[arm]
        arms.add(arm)
    assert arms == {"arm=champion", "arm=challenger"}
    solo, _ = _chat(server, keys["mine"], "user-0", model="solo")
    assert solo["x-shipyard-variant"] == "solo"  # no experiment: the deployment alone
    completion = httpx.post(f"{server.base_url}/v1/completions", headers={"authorization": f"Bearer {keys['mine']}"},
                            json={"model": "tiny", "prompt": "hi", "max_tokens": 2, "user": "user-1"}, timeout=60)
    user_1, _ = _chat(server, keys["mine"], "user-1")
    assert completion.headers["x-shipyard-variant"] == user_1["x-shipyard-variant"]  # the same user, the same arm
    deadline = time.monotonic() + 10  # usage rows are written in batches, after the responses
    while True:
        status = AdminClient(server.base_url).get("/admin/experiments/rollout").json()
        if sum(status["requests"].values()) >= 48 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(status["requests"].values()) >= 48 and set(status["requests"]) == {"champion", "challenger"}
    assert status["sample_ratio"]["mismatch"] is False, status
    assert [e["kind"] for e in status["events"]] == ["created"] and status["events"][0]["actor"] == "shipyard.yaml"


def test_feedback_lands_in_the_score_store_for_the_callers_own_tenant(server, keys):
    _, response_id = _chat(server, keys["mine"], "user-feedback")
    thumbs = call(server.base_url, keys["mine"], "POST", "/v1/feedback",
                  json={"response_id": response_id, "metric": "thumbs", "value": True, "tags": ["helpful"]})
    assert thumbs.status_code == 200, thumbs.text
    assert thumbs.json()["value"] is True and thumbs.json()["deployment"] in ("tiny", "tiny-v2")
    scores = AdminClient(server.base_url).get("/admin/scores", params={"name": "feedback.thumbs"}).json()["data"]
    assert scores[0]["source"] == "feedback" and scores[0]["tags"] == ["helpful"]
    unknown = call(server.base_url, keys["mine"], "POST", "/v1/feedback",
                   json={"response_id": "chatcmpl-nope", "metric": "thumbs", "value": True})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "response_not_found"
    stolen = call(server.base_url, keys["theirs"], "POST", "/v1/feedback",
                  json={"response_id": response_id, "metric": "thumbs", "value": False})
    assert stolen.status_code == 404  # another tenant's response is as unknown as a missing one
    for body, param in (({"metric": "thumbs", "value": "yes"}, "value"), ({"metric": "stars", "value": 4}, "metric"),
                        ({"metric": "thumbs"}, "value")):
        bad = call(server.base_url, keys["mine"], "POST", "/v1/feedback", json={"response_id": response_id, **body})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    assert call(server.base_url, keys["mine"], "POST", "/v1/feedback", json={"metric": "thumbs"}).status_code == 400
    assert call(server.base_url, None, "POST", "/v1/feedback",
                json={"response_id": response_id, "metric": "thumbs", "value": True}).status_code == 401


def test_transitions_apply_once_and_are_refused_when_they_cannot(server, keys):
    admin = AdminClient(server.base_url)
    clash = admin.post("/admin/experiments", json={"name": "second", "model": "tiny", "arms": ARMS})
    assert clash.status_code == 409  # one live experiment per model
    missing = admin.post("/admin/experiments", json={"name": "ghost", "model": "tiny", "arms": [
        ARMS[0], {"name": "b", "deployment": "nowhere"}]})
    assert missing.status_code == 400 and "nowhere" in missing.json()["error"]["message"]
    assert call(server.base_url, keys["mine"], "GET", "/admin/experiments").status_code == 403  # admins only
    assert admin.post("/admin/experiments/rollout/pause").status_code == 200
    assert admin.post("/admin/experiments/rollout/pause").status_code == 409
    assert admin.post("/admin/experiments/rollout/promote", json={"arm": "nobody"}).status_code == 400
    assert admin.post("/admin/experiments/rollout/promote").json()["serving_weights"] == {"champion": 0.0,
                                                                                         "challenger": 1.0}
    for user in (f"after-{i}" for i in range(8)):  # every user now goes to the promoted arm
        assert _chat(server, keys["mine"], user)[0]["x-shipyard-variant"].startswith("tiny-v2;")
    assert admin.post("/admin/experiments/rollout/rollback").status_code == 409  # it has ended
    kinds = [e["kind"] for e in admin.get("/admin/experiments/rollout").json()["events"]]
    assert kinds == ["created", "pause", "promote"]

    created = admin.post("/admin/experiments", json={"name": "race", "model": "solo", "arms": [
        {"name": "champion", "deployment": "solo"}, {"name": "b", "deployment": "tiny"}]})
    assert created.status_code == 201, created.text
    statuses: list[int] = []

    def rollback() -> None:
        statuses.append(AdminClient(server.base_url).post("/admin/experiments/race/rollback").status_code)

    threads = [threading.Thread(target=rollback) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [200, 409, 409, 409]
    events = admin.get("/admin/experiments/race").json()["events"]
    assert [e["kind"] for e in events] == ["created", "rollback"]
    assert _chat(server, keys["mine"], "anyone", model="solo")[0]["x-shipyard-variant"] == "solo"


def test_the_cli_creates_and_shows_experiments(server, tmp_path):
    import json
    import os
    import subprocess
    import sys

    spec = tmp_path / "canary.yaml"
    spec.write_text("name: cli-made\nmodel: tiny-v2\nmode: canary\ncanary: {steps: [0.05, 0.5, 1.0], min_requests: 1000}\n"
                    "arms:\n  - {name: champion, deployment: tiny-v2}\n  - {name: canary, deployment: solo}\n")

    def shipyard(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shipyard", "experiments", *args, "--url", server.base_url,
                               "--key", ADMIN_KEY, "--json"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "SHIPYARD_ADMIN_KEY": ""})

    created = shipyard("create", str(spec))
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["serving_weights"] == {"champion": 0.95, "canary": 0.05}
    shown = json.loads(shipyard("status", "cli-made").stdout)
    assert shown["mode"] == "canary" and [e["kind"] for e in shown["events"]] == ["created"]
    again = shipyard("create", str(spec))
    assert again.returncode == 1 and "exists" in again.stdout + again.stderr


def test_feedback_by_episode_and_implicit_signals(server, keys):
    auth = {"authorization": f"Bearer {keys['mine']}"}

    def ask(content: str, user: str, episode: str | None = None) -> str:
        headers = {**auth, **({"x-shipyard-episode-id": episode} if episode else {})}
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", headers=headers, timeout=60, json={
            "model": "solo", "user": user, "max_tokens": 2, "messages": [{"role": "user", "content": content}]})
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    ask("first turn", "episodic", episode="ep-7")
    ask("second turn", "episodic", episode="ep-7")
    liked = call(server.base_url, keys["mine"], "POST", "/v1/feedback",
                 json={"episode_id": "ep-7", "metric": "thumbs", "value": True})
    assert liked.status_code == 200, liked.text
    assert call(server.base_url, keys["theirs"], "POST", "/v1/feedback",
                json={"episode_id": "ep-7", "metric": "thumbs", "value": True}).status_code == 404
    both = call(server.base_url, keys["mine"], "POST", "/v1/feedback",
                json={"episode_id": "ep-7", "response_id": "chatcmpl-x", "metric": "thumbs", "value": True})
    assert both.status_code == 400

    admin = AdminClient(server.base_url)
    regenerated = ask("the same question", "implicit-user")
    ask("the same question", "implicit-user")  # asked again at once: the first answer was regenerated
    followed = ask("the same question", "implicit-user")
    ask("a different question", "implicit-user")  # a new question: the previous answer was followed up

    def names_of(response_id: str) -> set[str]:
        return {s["name"] for s in admin.get("/admin/scores", params={"request_id": response_id}).json()["data"]}

    until(lambda: "implicit.regenerate" in names_of(regenerated), 30, "no regenerate signal")
    until(lambda: "implicit.follow_up" in names_of(followed), 30, "no follow-up signal")


def test_a_replay_of_a_stored_dataset_feeds_the_decision_report(server, tmp_path):
    import json
    import os
    import subprocess
    import sys

    admin = AdminClient(server.base_url)
    created = admin.post("/admin/experiments", json={
        "name": "offline", "model": "solo", "mode": "champion_challenger", "shadow": {"sample": 0.0},
        "arms": [{"name": "champion", "deployment": "solo"}, {"name": "challenger", "deployment": "tiny"}]})
    assert created.status_code == 201, created.text
    rows = [{"messages": [{"role": "user", "content": f"Tell me about boats {i}"},
                          {"role": "assistant", "content": "Boats float on water."}]} for i in range(6)]
    rows += [{"prompt": f"The sea is {i}", "ideal": "blue and deep"} for i in range(6)]
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("\n".join(json.dumps(r) for r in rows))

    def shipyard(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shipyard", "experiments", *args, "--url", server.base_url,
                               "--key", ADMIN_KEY], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "SHIPYARD_ADMIN_KEY": ""})

    try:
        replayed = shipyard("replay", "offline", "--dataset", str(dataset), "--max-tokens", "4", "--json")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        job = json.loads(replayed.stdout)
        assert job["status"] == "done" and job["done"] == 12 and job["failed"] == 0
        until(lambda: "reference_cosine" in json.dumps(admin.get("/admin/experiments/offline/report").json()),
              30, "the replay's scores written")
        report = json.loads(shipyard("report", "offline", "--min-samples", "5", "--json").stdout)
        replay = report["sections"]["replay"]
        assert replay["pairs"] == 12 and "served" not in report["sections"]
        metrics = {m["metric"]: m for m in replay["metrics"]}
        assert set(metrics) == {"error_rate", "latency_ms", "ttft_ms", "cost_usd", "reference_cosine"}
        same = metrics["reference_cosine"]  # the same model on both arms, greedy: the same answers
        assert same["paired"] and same["n"] == [12, 12] and same["effect"] == pytest.approx(0, abs=1e-6)
        assert same["decision"] == "inconclusive" and same["p_value"] == 1.0
        assert report["agreement"]["shadow.exact_match"] == {"n": 12, "mean": 1.0}
        # Same answers: quality says nothing. Latency is the machine's: both arms share its cores, so on
        # one core the arm scheduled second can be measurably slower. The recommendation follows the
        # decisions whichever way they went: keep the champion on a worse metric, promote on a better
        # one, else keep collecting.
        worse = [m["metric"] for m in replay["metrics"] if m["decision"] == "challenger_worse"]
        better = [m["metric"] for m in replay["metrics"] if m["decision"] == "challenger_better"]
        assert set(worse) | set(better) <= {"latency_ms", "ttft_ms"}
        expected = "keep_champion" if worse else "promote" if better else "continue"
        assert report["recommendation"]["action"] == expected
        shown = shipyard("report", "offline", "--min-samples", "5")  # as the JSON report above
        assert shown.returncode == 0 and f"recommendation: {expected}" in shown.stdout
        assert call(server.base_url, ADMIN_KEY, "GET", "/admin/experiments/offline/replays/nope").status_code == 404
        bad = call(server.base_url, ADMIN_KEY, "POST", "/admin/experiments/offline/replay",
                   json={"dataset": [{"messages": [{"role": "assistant", "content": "no prompt"}]}]})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        usage = admin.get("/admin/usage", params={"group_by": "model"}).json()
        assert "offline" not in json.dumps(usage)  # replays bill no tenant
    finally:
        admin.post("/admin/experiments/offline/rollback")
