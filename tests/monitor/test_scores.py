"""The score store over the admin API: a tenant scores its own requests (by the server's id or
its own x-request-id), reads only its own scores, never sees or touches another tenant's; each
score carries OpenTelemetry's gen_ai.evaluation.result attributes."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import MODEL_NAME
from gateway_support import ADMIN_KEY, call


def _served(server, key: str, request_id: str | None = None) -> str:
    headers = {"authorization": f"Bearer {key}", **({"x-request-id": request_id} if request_id else {})}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", headers=headers, timeout=30,
                          json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def _score(server, key: str, *scores: dict):
    return call(server.base_url, key, "POST", "/admin/scores", json=list(scores))


@pytest.fixture(scope="module")
def tenants(admin, auth_server):
    keys = {}
    for name in ("scored-a", "scored-b"):
        tenant = admin.tenant(name)
        keys[name] = {"id": tenant, "dev": admin.key(tenant)["key"], "viewer": admin.key(tenant, role="viewer")["key"]}
    return keys


def test_a_tenant_scores_and_reads_its_own_requests_only(auth_server, tenants):
    a, b = tenants["scored-a"], tenants["scored-b"]
    mine, theirs = _served(auth_server, a["dev"]), _served(auth_server, b["dev"])
    time.sleep(0.5)  # usage records are written in batches
    created = _score(auth_server, a["dev"], {"request_id": mine, "name": "thumbs", "value": True},
                     {"request_id": mine, "name": "relevance", "value": 0.75, "comment": "close enough"},
                     {"request_id": mine, "name": "topic", "value": "python", "source": "annotation"})
    assert created.status_code == 201, created.text
    rows = created.json()["data"]
    assert [r["kind"] for r in rows] == ["boolean", "numeric", "categorical"]
    assert rows[0]["deployment"] == MODEL_NAME and rows[0]["tenant_id"] == a["id"]
    assert rows[1]["otel"] == {"event": "gen_ai.evaluation.result", "gen_ai.evaluation.name": "relevance",
                               "gen_ai.response.id": mine, "gen_ai.evaluation.score.value": 0.75,
                               "gen_ai.evaluation.explanation": "close enough"}
    assert rows[0]["otel"]["gen_ai.evaluation.score.label"] == "true"

    # another tenant's request is as unknown as a missing one, for writing and for reading
    assert _score(auth_server, b["dev"], {"request_id": mine, "name": "thumbs", "value": False}).status_code == 404
    assert _score(auth_server, a["dev"], {"request_id": theirs, "name": "thumbs", "value": False}).status_code == 404
    b_view = call(auth_server.base_url, b["viewer"], "GET", "/admin/scores").json()["data"]
    assert all(r["tenant_id"] == b["id"] for r in b_view) and not any(r["request_id"] == mine for r in b_view)
    assert call(auth_server.base_url, b["viewer"], "GET", f"/admin/scores?tenant_id={a['id']}").status_code == 403
    a_view = call(auth_server.base_url, a["viewer"], "GET", f"/admin/scores?request_id={mine}").json()["data"]
    assert {r["name"] for r in a_view if r["source"] != "monitor"} == {"thumbs", "relevance", "topic"}
    assert {r["name"] for r in a_view if r["source"] == "monitor"} <= {"mean_logprob", "min_logprob", "mean_entropy"}
    everything = call(auth_server.base_url, ADMIN_KEY, "GET", "/admin/scores?name=thumbs").json()["data"]
    assert any(r["request_id"] == mine for r in everything)


def test_a_clients_own_request_id_and_bad_scores(auth_server, tenants):
    a = tenants["scored-a"]
    assert _served(auth_server, a["dev"], "my_trace_1") == "my_trace_1"
    _served(auth_server, a["dev"], "my_traceX1")  # later, and matched by "my_trace_1" if _ were a wildcard
    time.sleep(0.5)
    ok = _score(auth_server, a["dev"], {"request_id": "my_trace_1", "name": "thumbs", "value": True})
    assert ok.status_code == 201 and ok.json()["data"][0]["request_id"].startswith("my_trace_1/")
    assert _score(auth_server, a["dev"], {"request_id": "my_trace", "name": "thumbs", "value": True}).status_code == 404
    bad = [
        {"request_id": "my_trace_1", "name": "has space", "value": 1},
        {"request_id": "my_trace_1", "name": "x", "value": "y" * 201},
        {"request_id": "my_trace_1", "name": "x", "value": [1]},
        {"request_id": "my_trace_1", "name": "x", "value": 1, "source": "monitor"},  # the system's own, not a client's
        {"request_id": "my_trace_1", "name": "x", "value": 1, "extra": 1},
    ]
    for score in bad:
        response = _score(auth_server, a["dev"], score)
        assert response.status_code == 400 and response.json()["error"]["message"], (score, response.text)
    assert _score(auth_server, a["dev"]).status_code == 400  # an empty list
    assert _score(auth_server, a["viewer"], {"request_id": "my_trace_1", "name": "x", "value": 1}).status_code == 403
