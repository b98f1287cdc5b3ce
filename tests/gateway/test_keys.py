"""Keys: rotation with a grace window, immediate revoke, expiry, secrets never at rest or in output."""

from __future__ import annotations

import sqlite3
import time

import openai
import pytest

from conftest import MODEL_NAME
from gateway_support import ADMIN_KEY, call, chat_body


def _ok(base_url: str, key: str) -> int:
    return call(base_url, key, "POST", "/v1/chat/completions", json=chat_body(1)).status_code


def test_rotation_grace_window(auth_server, admin):
    tenant = admin.tenant("rotation")
    created = admin.key(tenant)
    old = created["key"]
    assert _ok(auth_server.base_url, old) == 200
    rotated = admin.post(f"/admin/keys/{created['id']}/rotate", json={"grace_period_s": 2}).json()
    new = rotated["key"]
    assert rotated["id"] == created["id"] and new != old
    assert _ok(auth_server.base_url, new) == 200
    assert _ok(auth_server.base_url, old) == 200  # inside the grace window
    time.sleep(2.2)
    assert _ok(auth_server.base_url, old) == 401  # after it
    assert _ok(auth_server.base_url, new) == 200


def test_rotation_without_grace_cuts_the_old_secret_at_once(auth_server, admin):
    created = admin.key(admin.tenant("rotation-now"))
    rotated = admin.post(f"/admin/keys/{created['id']}/rotate").json()
    assert _ok(auth_server.base_url, created["key"]) == 401
    assert _ok(auth_server.base_url, rotated["key"]) == 200


def test_revoke_is_immediate(auth_server, admin):
    created = admin.key(admin.tenant("revoke"))
    assert _ok(auth_server.base_url, created["key"]) == 200
    assert admin.post(f"/admin/keys/{created['id']}/revoke").status_code == 200
    response = call(auth_server.base_url, created["key"], "POST", "/v1/chat/completions", json=chat_body(1))
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]


def test_expired_key_gets_401_without_echoing_it(auth_server, admin):
    created = admin.key(admin.tenant("expiry"), expires_in_s=1)
    assert _ok(auth_server.base_url, created["key"]) == 200
    time.sleep(1.2)
    response = call(auth_server.base_url, created["key"], "POST", "/v1/chat/completions", json=chat_body(1))
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]
    secret = created["key"].split("-")[2]
    assert secret not in response.text and created["key"] not in response.text


def test_rotation_policy_flags_keys_and_sets_the_grace(auth_server, admin):
    tenant = admin.tenant("policy")
    created = admin.key(tenant, rotation_period_days=1, rotation_grace_s=30)
    assert created["rotation_due"] is False
    listed = admin.get(f"/admin/keys/{created['id']}").json()
    assert listed["rotation_period_days"] == 1 and "key" not in listed
    assert admin.get("/admin/keys", params={"tenant_id": tenant, "rotation_due": "true"}).json()["data"] == []
    rotated = admin.post(f"/admin/keys/{created['id']}/rotate").json()  # no grace in the call: the policy's
    assert rotated["previous_secret_valid_until"] is not None
    assert _ok(auth_server.base_url, created["key"]) == 200 and _ok(auth_server.base_url, rotated["key"]) == 200


def test_rotation_due_after_the_period():
    from datetime import timedelta

    from shipyard.gateway.auth import rotation_due
    from shipyard.gateway.keystore import utcnow
    from shipyard.store.models import ApiKey

    key = ApiKey(rotation_period_days=30, created_at=utcnow() - timedelta(days=31))
    assert rotation_due(key)
    key.rotated_at = utcnow() - timedelta(days=2)
    assert not rotation_due(key)
    assert not rotation_due(ApiKey(created_at=utcnow() - timedelta(days=999)))


def test_openai_client_error_classes(auth_server, admin):
    tenant = admin.tenant("client-errors")
    limited = admin.key(tenant, rpm=1, allowed_models=[MODEL_NAME])
    restricted = admin.key(tenant, allowed_models=["some-other-model"])
    url = f"{auth_server.base_url}/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="sy-nosuchkey00-deadbeef", max_retries=0).models.list()
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=url, api_key=restricted["key"], max_retries=0).chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=1)
    client = openai.OpenAI(base_url=url, api_key=limited["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=MODEL_NAME, messages=[{"role": "user",
                                                                                       "content": "x"}], max_tokens=1)
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=1)
    assert int(excinfo.value.response.headers["retry-after"]) >= 1
    assert excinfo.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "requests per minute for this API key" in excinfo.value.message


def test_no_plaintext_secret_anywhere(auth_server, admin):
    tenant = admin.tenant("secrets")
    created = admin.key(tenant)
    rotated = admin.post(f"/admin/keys/{created['id']}/rotate", json={"grace_period_s": 60}).json()
    plaintexts = [created["key"], rotated["key"], ADMIN_KEY]
    secrets = [k.split("-")[2] for k in plaintexts[:2]] + [ADMIN_KEY]
    # use them, badly and well, so they pass through every code path that could leak them
    for key in plaintexts:
        call(auth_server.base_url, key, "POST", "/v1/chat/completions", json=chat_body(1))
        call(auth_server.base_url, key + "x", "POST", "/v1/chat/completions", json=chat_body(1))
        call(auth_server.base_url, key, "POST", "/v1/chat/completions", json={"model": "missing"})
    bodies = [admin.get("/admin/keys").text, admin.get(f"/admin/keys/{created['id']}").text,
              call(auth_server.base_url, created["key"] + "x", "GET", "/v1/models").text]
    time.sleep(0.5)
    database = next((auth_server.log_path.parent / f"data-{auth_server.port}").glob("shipyard.db"))
    dump = "\n".join(sqlite3.connect(database).iterdump())
    for secret in secrets:
        assert secret not in auth_server.log(), "secret in the server log"
        assert secret not in dump, "secret in the database"
        for body in bodies:
            assert secret not in body, "secret in a response body"
