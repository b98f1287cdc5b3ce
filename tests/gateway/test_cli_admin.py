"""`shipyard tenants|keys|usage` against a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gateway_support import ADMIN_KEY, call, chat_body


def shipyard(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHIPYARD_URL": server.base_url, "SHIPYARD_ADMIN_KEY": ADMIN_KEY, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_cli_manages_tenants_keys_and_usage(auth_server):
    tenant = json.loads(shipyard(auth_server, "tenants", "create", "cli-tenant", "--rpm", "50", "--json").stdout)
    assert tenant["name"] == "cli-tenant" and tenant["rpm"] == 50
    created = json.loads(shipyard(auth_server, "keys", "create", "--tenant", tenant["id"], "--role", "developer",
                                  "--tier", "3", "--json").stdout)
    assert created["key"].startswith("sy-") and created["tier"] == 3
    assert call(auth_server.base_url, created["key"], "POST", "/v1/chat/completions",
                json=chat_body(1)).status_code == 200

    listed = json.loads(shipyard(auth_server, "keys", "list", "--tenant", tenant["id"], "--json").stdout)
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and created["key"].split("-")[2] not in json.dumps(listed)

    table = shipyard(auth_server, "keys", "list", "--tenant", tenant["id"]).stdout
    assert created["id"] in table

    rotated = json.loads(shipyard(auth_server, "keys", "rotate", created["id"], "--json").stdout)
    assert rotated["key"] != created["key"]
    assert call(auth_server.base_url, created["key"], "GET", "/v1/models").status_code == 401

    revoked = json.loads(shipyard(auth_server, "keys", "revoke", created["id"], "--json").stdout)
    assert revoked["revoked_at"]
    assert call(auth_server.base_url, rotated["key"], "GET", "/v1/models").status_code == 401

    import time

    time.sleep(0.5)  # usage is written in the background
    out = shipyard(auth_server, "usage", "--tenant", tenant["id"], "--csv").stdout
    assert out.splitlines()[0].startswith("tenant_id,key_id,model,requests")
    assert tenant["id"] in out


def test_cli_reports_errors_without_secrets(auth_server):
    result = shipyard(auth_server, "keys", "show", "no-such-key")
    assert result.returncode == 1 and "404" in result.stdout
    env_less = subprocess.run([sys.executable, "-m", "shipyard", "keys", "list", "--url", auth_server.base_url,
                               "--key", "sy-wrongkey0000-abcdef"], capture_output=True, text=True, timeout=60)
    assert env_less.returncode == 1 and "401" in env_less.stdout and "abcdef" not in env_less.stdout
