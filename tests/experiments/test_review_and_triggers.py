"""The review queue and a retraining trigger through a real server: thumbs-down feedback queues the
response for review (each tenant's reviewers see only their own), two reviewers racing for one item
cannot both claim it, only the claimer labels, labels become annotation scores, labelled items
export as OpenAI fine-tuning JSONL; the same thumbs-down fire a signed webhook once, and every
evaluation after it is audited as suppressed. An "accepted" event is an implicit signal."""

from __future__ import annotations

import json
import threading

import pytest
from openai import OpenAI

from conftest import ServerProcess, deployment, until
from gateway_support import ADMIN_KEY, AdminClient, call
from openapi_schema import validate
from shipyard.monitor.notify import verify
from webhook_receiver import WebhookReceiver

SECRET = "retrain-secret-0123456789"


@pytest.fixture(scope="module")
def receiver():
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory, receiver):
    config = {"deployments": {"tiny": deployment(tiny_model)},
              "gateway": {"usage_flush_interval_s": 0.1}, "cache": {"exact": {"enabled": False}},
              "review": {"enabled": True, "sample": 0.0, "scan_interval_s": 0.2},
              "retraining": {"interval_s": 0.5, "triggers": [{
                  "name": "thumbs-low", "metric": {"score": "feedback.thumbs", "below": 0.5, "min_samples": 4},
                  "cooldown_s": 3600, "action": {"webhook": {"url": receiver.url, "secret": SECRET}}}]}}
    with ServerProcess(config, tmp_path_factory.mktemp("review"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        proc.wait_for("/ready", 200)
        yield proc


@pytest.fixture(scope="module")
def people(server):
    admin = AdminClient(server.base_url)
    mine, theirs = admin.tenant("mine"), admin.tenant("theirs")
    return {"mine": admin.key(mine)["key"], "theirs": admin.key(theirs)["key"],
            "reviewer": admin.key(mine, role="tenant-admin")["key"],
            "their_reviewer": admin.key(theirs, role="tenant-admin")["key"],
            "viewer": admin.key(mine, role="viewer")["key"]}


def _answered(server, key: str, content: str) -> str:
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(model="tiny", max_tokens=4, temperature=0,
                                          messages=[{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": content}]).id


def _thumbs(server, key: str, response_id: str, value: bool):
    response = call(server.base_url, key, "POST", "/v1/feedback",
                    json={"response_id": response_id, "metric": "thumbs", "value": value})
    assert response.status_code == 200, response.text


def _items(server, key: str, **params) -> list[dict]:
    response = call(server.base_url, key, "GET", "/admin/review", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


@pytest.fixture(scope="module")
def queued(server, people):
    answers = [_answered(server, people["mine"], f"Question {i}?") for i in range(4)]
    for response_id in answers[:3]:
        _thumbs(server, people["mine"], response_id, False)
    _thumbs(server, people["mine"], answers[3], True)  # a thumbs-up queues nothing
    theirs = _answered(server, people["theirs"], "Their question?")
    _thumbs(server, people["theirs"], theirs, False)
    until(lambda: len(_items(server, ADMIN_KEY)) >= 4, 30, "thumbs-down responses queued for review")
    return answers, theirs


def test_thumbs_down_queues_a_response_for_its_own_tenants_reviewers(server, people, queued):
    answers, theirs = queued
    mine = _items(server, people["reviewer"])
    assert sorted(i["response_id"] for i in mine) == sorted(answers[:3])
    assert all(i["reason"] == "thumbs_down" and i["status"] == "pending" for i in mine)
    assert mine[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": mine[0]["messages"][1]["content"]}]
    assert [i["response_id"] for i in _items(server, people["their_reviewer"])] == [theirs]
    assert len(_items(server, ADMIN_KEY)) == 4
    their_item = _items(server, people["their_reviewer"])[0]["id"]
    for method, path in (("GET", f"/admin/review/{their_item}"), ("POST", f"/admin/review/{their_item}/claim")):
        hidden = call(server.base_url, people["reviewer"], method, path)
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    refused = call(server.base_url, people["reviewer"], "GET", "/admin/review", params={"tenant_id": "theirs"})
    assert refused.status_code == 403
    for key in (people["viewer"], people["mine"]):  # viewers and developers do not review
        assert call(server.base_url, key, "GET", "/admin/review").status_code == 403


def test_racing_claims_one_wins_only_the_claimer_labels_and_labels_become_scores(server, people, queued):
    item = _items(server, people["reviewer"], status="pending")[0]
    results: dict[str, int] = {}

    def claim(key):  # two reviewers at once, one call each: the versioned claim lets exactly one win
        results[key] = call(server.base_url, key, "POST", f"/admin/review/{item['id']}/claim").status_code

    threads = [threading.Thread(target=claim, args=(key,)) for key in (people["reviewer"], ADMIN_KEY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == [200, 409]
    winner, loser = sorted(results, key=lambda key: results[key])
    holder = call(server.base_url, ADMIN_KEY, "GET", f"/admin/review/{item['id']}").json()["claimed_by"]
    assert holder == call(server.base_url, winner, "GET", "/admin/whoami").json()["key_id"]
    label = {"verdict": "good", "labels": {"tone": "curt", "helpful": False}, "comment": "fine"}
    taken = call(server.base_url, loser, "POST", f"/admin/review/{item['id']}/label", json=label)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "not_claimed"
    bad = call(server.base_url, winner, "POST", f"/admin/review/{item['id']}/label", json={"verdict": "meh"})
    assert bad.status_code == 400
    labelled = call(server.base_url, winner, "POST", f"/admin/review/{item['id']}/label", json=label)
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["status"] == "labelled" and labelled.json()["labels"]["verdict"] == "good"
    again = call(server.base_url, winner, "POST", f"/admin/review/{item['id']}/claim")
    assert again.status_code == 409
    scores = AdminClient(server.base_url).get("/admin/scores", params={"request_id": item["response_id"]}).json()
    annotations = {s["name"]: s["value"] for s in scores["data"] if s["source"] == "annotation"}
    assert annotations == {"review.verdict": True, "review.tone": "curt", "review.helpful": False}


def test_labelled_items_export_as_fine_tuning_jsonl(server, people, queued):
    reviewer = people["reviewer"]
    for item, body in zip(_items(server, reviewer, status="pending"),
                          ({"verdict": "bad", "correction": "A better answer."}, {"verdict": "bad"})):
        assert call(server.base_url, reviewer, "POST", f"/admin/review/{item['id']}/claim").status_code == 200
        assert call(server.base_url, reviewer, "POST", f"/admin/review/{item['id']}/label", json=body).status_code == 200
    export = call(server.base_url, reviewer, "GET", "/admin/review/export")
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/jsonl")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert len(lines) == 2  # a good answer and a correction; a bad answer without one is left out
    assert "A better answer." in [line["messages"][-1]["content"] for line in lines]
    for line in lines:
        system, user, assistant = line["messages"]
        validate("ChatCompletionRequestSystemMessage", system)
        validate("ChatCompletionRequestUserMessage", user)
        validate("FineTuneChatCompletionRequestAssistantMessage", assistant)
    assert call(server.base_url, people["their_reviewer"], "GET", "/admin/review/export").text == ""


def test_thumbs_down_fire_the_retraining_webhook_once_and_later_evaluations_are_suppressed(server, queued,
                                                                                          receiver):
    until(lambda: receiver.accepted, 30, "the retraining webhook")
    headers, body = receiver.accepted[0]
    assert verify(SECRET.encode(), headers["x-shipyard-signature"], body)
    payload = json.loads(body)
    assert payload["trigger"] == "thumbs-low" and payload["observed"] < 0.5
    assert headers["idempotency-key"] == payload["idempotency_key"]
    admin = AdminClient(server.base_url)
    until(lambda: len(admin.get("/admin/triggers/thumbs-low/evaluations").json()["data"]) >= 4, 30, "evaluations")
    audit = admin.get("/admin/triggers/thumbs-low/evaluations").json()["data"]
    assert sum(r["outcome"] == "fired" for r in audit) == 1 and len(receiver.accepted) == 1
    assert any(r["reason"].startswith("fired already") for r in audit)
    assert [r["outcome"] for r in audit if r["kind"] == "action"] == ["delivered"]
    listed = admin.get("/admin/triggers").json()["data"][0]
    assert listed["name"] == "thumbs-low" and listed["action"] == "webhook" and SECRET not in json.dumps(listed)


def test_an_accepted_event_is_an_implicit_signal(server, people):
    response_id = _answered(server, people["mine"], "Accept me")
    accepted = call(server.base_url, people["mine"], "POST", "/v1/feedback",
                    json={"response_id": response_id, "event": "accepted"})
    assert accepted.status_code == 200 and accepted.json()["metric"] == "implicit.accepted"
    both = call(server.base_url, people["mine"], "POST", "/v1/feedback",
                json={"response_id": response_id, "event": "accepted", "metric": "thumbs", "value": True})
    assert both.status_code == 400
    scores = AdminClient(server.base_url).get("/admin/scores", params={"name": "implicit.accepted"}).json()["data"]
    assert scores[0]["value"] == 1.0 and scores[0]["source"] == "feedback"
