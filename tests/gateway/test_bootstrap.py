"""The first admin key: from SHIPYARD_ADMIN_KEY (replaced when it changes), or created and shown once."""

from __future__ import annotations

import stat

from conftest import ServerProcess
from gateway_support import call, gateway_config


def test_admin_key_from_environment_is_replaced_when_it_changes(tiny_model, tmp_path):
    config = gateway_config(tiny_model)
    first, second = "first-admin-key-0123456789", "second-admin-key-0123456789"
    server = ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": first})
    data_dir = tmp_path / f"data-{server.port}"
    try:
        server.wait_ready()
        assert call(server.base_url, first, "GET", "/admin/whoami").json()["role"] == "admin"
    finally:
        server.stop()
    again = ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": second, "SHIPYARD_DATA_DIR": str(data_dir)})
    try:
        again.wait_ready()
        assert call(again.base_url, second, "GET", "/admin/whoami").status_code == 200
        assert call(again.base_url, first, "GET", "/admin/whoami").status_code == 401
    finally:
        again.stop()
    assert first not in again.log() and second not in again.log()


def test_short_admin_key_is_refused(tiny_model, tmp_path):
    server = ServerProcess(gateway_config(tiny_model), tmp_path, env={"SHIPYARD_ADMIN_KEY": "too-short"})
    try:
        server.proc.wait(timeout=60)
        assert server.proc.returncode != 0
        assert "at least 20 characters" in server.log()
    finally:
        server.stop()


def test_first_admin_key_is_created_once_into_a_private_file(tiny_model, tmp_path):
    server = ServerProcess(gateway_config(tiny_model), tmp_path, env={"SHIPYARD_ADMIN_KEY": ""})
    path = tmp_path / f"data-{server.port}" / "first-admin-key"
    try:
        server.wait_ready()
        key = path.read_text().strip()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert call(server.base_url, key, "GET", "/admin/whoami").json()["role"] == "admin"
        assert key not in server.log() and key.split("-")[2] not in server.log()
        assert str(path) in server.log()
    finally:
        server.stop()
