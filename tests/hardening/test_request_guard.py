"""Items 10, 17 (media type), 19: nothing is read or held before the key is checked, slow clients
time out, bodies must be JSON, and clients cannot forge log lines."""

from __future__ import annotations

import socket

import httpx
import pytest

from conftest import ServerProcess
from gateway_support import ADMIN_KEY, call, gateway_config


@pytest.fixture(scope="module")
def guarded(tiny_model, tmp_path_factory):
    config = gateway_config(tiny_model)
    config["server"] = {"body_timeout_s": 3, "body_idle_timeout_s": 1, "header_timeout_s": 1}
    with ServerProcess(config, tmp_path_factory.mktemp("guard"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or the timeout)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except socket.timeout:
        raise AssertionError(f"the server kept the connection open; got {data[:200]!r}") from None
    return data


def _partial_post(server, key: str | None, declared: int, sent: int) -> socket.socket:
    sock = _connect(server)
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{auth}"
            f"content-length: {declared}\r\n\r\n")
    sock.sendall(head.encode() + b"{" + b" " * (sent - 1))
    return sock


def test_an_unauthenticated_body_is_refused_before_it_is_read(guarded):
    sock = _partial_post(guarded, None, declared=1_900_000, sent=100_000)
    answer = _read_all(sock, timeout=5)
    # a 401, not the body timeout's 408: refused before the body was waited for
    assert answer.startswith(b"HTTP/1.1 401") and b"invalid_api_key" in answer
    sock.close()


def test_a_stalled_body_times_out_and_the_connection_closes(guarded):
    sock = _partial_post(guarded, ADMIN_KEY, declared=500_000, sent=10_000)
    answer = _read_all(sock, timeout=10)  # and closed: _read_all fails on a connection left open
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    sock.close()


def test_slow_headers_are_cut(guarded):
    sock = _connect(guarded)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
    assert _read_all(sock, timeout=10) == b""  # closed, never answered
    sock.close()
    assert httpx.get(f"{guarded.base_url}/health").status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/admin/tenants"])
def test_a_body_that_is_not_json_is_415(guarded, content_type, path):
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    if content_type:
        headers["content-type"] = content_type
    response = httpx.post(f"{guarded.base_url}{path}", content=b'{"model": "tiny"}', headers=headers)
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]


def test_json_variants_and_bodiless_posts_pass(guarded):
    headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json; charset=utf-8"}
    body = b'{"model": "tiny", "prompt": "x", "max_tokens": 1}'
    assert httpx.post(f"{guarded.base_url}/v1/completions", content=body, headers=headers).status_code == 200
    tenant = call(guarded.base_url, ADMIN_KEY, "POST", "/admin/tenants", json={"name": "bodiless"}).json()["id"]
    key = call(guarded.base_url, ADMIN_KEY, "POST", "/admin/keys", json={"tenant_id": tenant}).json()["id"]
    # rotate's body is optional: no body, no content type, no 415
    rotated = httpx.post(f"{guarded.base_url}/admin/keys/{key}/rotate", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert rotated.status_code == 200


def test_clients_cannot_forge_log_lines(guarded):
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    httpx.get(f"{guarded.base_url}/v1/models/x%0a2026-01-01 00:00:00,000 INFO  shipyard.access: FORGED-PATH",
              headers=headers)
    body = {"model": "m\n2026-01-01 00:00:00,000 INFO  shipyard.access: FORGED-MODEL", "prompt": "x"}
    assert httpx.post(f"{guarded.base_url}/v1/completions", json=body, headers=headers).status_code == 404
    guarded.wait_for_log("FORGED-MODEL")
    lines = guarded.log().splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")]
    assert any("\\n2026-01-01" in line and "FORGED-PATH" in line for line in lines)
    assert any("\\n2026-01-01" in line and "FORGED-MODEL" in line for line in lines)
