"""Items 5, 14, 15, 16: tier ceilings, bounded admin fields (400s, never 500s, on SQLite and
PostgreSQL), serialized races, and the CLI honouring a key's own grace policy."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call, gateway_config


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store_server(request, tiny_model, tmp_path_factory):
    config = gateway_config(tiny_model)
    if request.param == "postgres":
        config["store"] = {"url": request.getfixturevalue("postgres_server").url}
    with ServerProcess(config, tmp_path_factory.mktemp("admin"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


BAD_BODIES = [
    ("/admin/keys", {"expires_in_s": 1e12}),
    ("/admin/keys", {"rotation_grace_s": 1e12}),
    ("/admin/keys", {"rpm": 2**63}),
    ("/admin/keys", {"tpm": 2**31}),
    ("/admin/keys", {"max_concurrent": 2**40}),
    ("/admin/keys", {"name": "n" * 201}),
    ("/admin/keys", {"budget_usd": 1e300}),
    ("/admin/keys", {"rotation_period_days": 2**31}),
    ("/admin/keys", {"allowed_models": ["m" * 201]}),
    ("/admin/keys", {"tier": 101}),
    ("/admin/keys", {"unknown_field": 1}),
    ("/admin/tenants", {"name": "t" * 201}),
    ("/admin/tenants", {"name": "ok-name", "budget_usd": 1e300}),
    ("/admin/tenants", {"name": "ok-name", "rpm": 2**31}),
    ("/admin/tenants", {"name": "ok-name", "max_tier": 1000}),
]


@pytest.mark.parametrize("path, fields", BAD_BODIES, ids=lambda v: str(v)[:40])
def test_out_of_range_admin_fields_are_400s(store_server, path, fields):
    admin = AdminClient(store_server.base_url)
    body = {**fields}
    if path == "/admin/keys":
        body["tenant_id"] = "system"
    response = admin.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_rotate_with_an_absurd_grace_is_400_and_nan_is_refused(store_server):
    admin = AdminClient(store_server.base_url)
    key = admin.key("system")
    assert admin.post(f"/admin/keys/{key['id']}/rotate", json={"grace_period_s": 1e12}).status_code == 400
    nan = admin.http.post("/admin/keys", content=b'{"tenant_id": "system", "budget_usd": NaN}',
                          headers={"content-type": "application/json"})
    assert nan.status_code == 400


def test_simultaneous_creates_of_one_tenant_name(store_server):
    admin = AdminClient(store_server.base_url)
    name = f"race-{os.getpid()}-{store_server.port}"
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = sorted(pool.map(lambda _: AdminClient(store_server.base_url).post(
            "/admin/tenants", json={"name": name}).status_code, range(10)))
    assert statuses == [201] + [409] * 9
    assert [t for t in admin.get("/admin/tenants").json()["data"] if t["name"] == name]


def test_simultaneous_rotations_have_one_winner(store_server):
    admin = AdminClient(store_server.base_url)
    key = admin.key(admin.tenant(f"rotations-{store_server.port}"))
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda _: AdminClient(store_server.base_url).post(
            f"/admin/keys/{key['id']}/rotate", json={"grace_period_s": 0}), range(5)))
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) >= 1 and all(r.status_code in (200, 409) for r in responses)
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}
    working = [r.json() for r in winners
               if call(store_server.base_url, r.json()["key"], "POST", "/v1/completions", json=body).status_code == 200]
    # Overlapping rotations: one wins, the others get 409. Rotations the store serialized one after
    # another each won in turn; the secret that works is the last one's.
    assert len(working) == 1
    assert working[0]["rotated_at"] == max(r.json()["rotated_at"] for r in winners)


def test_tenant_admins_stay_under_their_tier_ceiling(store_server):
    admin = AdminClient(store_server.base_url)
    tenant = admin.tenant(f"ceiling-{store_server.port}", max_tier=3)
    tenant_admin = AdminClient(store_server.base_url, admin.key(tenant, "tenant-admin")["key"])
    assert tenant_admin.post("/admin/keys", json={"tier": 3}).status_code == 201
    refused = tenant_admin.post("/admin/keys", json={"tier": 4})
    assert refused.status_code == 403 and "ceiling" in refused.json()["error"]["message"]
    assert tenant_admin.post("/admin/keys", json={"role": "metrics"}).status_code == 403
    assert admin.http.patch(f"/admin/tenants/{tenant}", json={"max_tier": 9}).json()["max_tier"] == 9
    assert tenant_admin.post("/admin/keys", json={"tier": 9}).status_code == 201
    assert admin.post("/admin/keys", json={"tenant_id": tenant, "tier": 50}).status_code == 201  # admins may


def test_cli_rotate_uses_the_keys_own_grace_policy(store_server):
    admin = AdminClient(store_server.base_url)
    key = admin.key(admin.tenant(f"cli-grace-{store_server.port}"), rotation_grace_s=300)
    env = {**os.environ, "SHIPYARD_URL": store_server.base_url, "SHIPYARD_API_KEY": ADMIN_KEY}
    out = subprocess.run([sys.executable, "-m", "shipyard", "keys", "rotate", key["id"], "--json"],
                         capture_output=True, text=True, env=env, check=True)
    assert '"previous_secret_valid_until": null' not in out.stdout
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}
    assert call(store_server.base_url, key["key"], "POST", "/v1/completions", json=body).status_code == 200
