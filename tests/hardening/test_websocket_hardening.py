"""Items 3, 9, 25: a socket re-checks its key for every request, frames are bounded, and socket
requests are logged and counted like HTTP ones."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, chat_body, gateway_config


@pytest.fixture(scope="module", params=["in-process", "redis"])
def ws_server(request, tiny_model, tmp_path_factory):
    gateway = {"usage_flush_interval_s": 0.1}
    if request.param == "redis":
        gateway["redis_url"] = request.getfixturevalue("redis_server").url
    config = gateway_config(tiny_model, **gateway)
    config["server"] = {"max_body_bytes": 64 * 1024}
    with ServerProcess(config, tmp_path_factory.mktemp("ws"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


def _url(server) -> str:
    return server.base_url.replace("http", "ws") + "/v1/chat/completions"


async def _ask(ws) -> list:
    await ws.send(json.dumps(chat_body(2)))
    frames = []
    while True:
        frame = await asyncio.wait_for(ws.recv(), 30)
        if frame == "[DONE]":
            return frames
        frames.append(json.loads(frame))


@pytest.mark.parametrize("change", ["revoke", "rotate", "expire"])
async def test_a_socket_stops_working_when_its_key_does(ws_server, change):
    admin = AdminClient(ws_server.base_url)
    fields = {"expires_in_s": 3} if change == "expire" else {}
    key = admin.key(admin.tenant(f"socket-{change}-{time.monotonic_ns()}"), **fields)
    headers = {"authorization": f"Bearer {key['key']}"}
    async with websockets.connect(_url(ws_server), additional_headers=headers) as ws:
        frames = await _ask(ws)
        assert "error" not in frames[0]
        if change == "revoke":
            assert admin.post(f"/admin/keys/{key['id']}/revoke").status_code == 200
        elif change == "rotate":
            assert admin.post(f"/admin/keys/{key['id']}/rotate", json={"grace_period_s": 0}).status_code == 200
        else:
            await asyncio.sleep(3.2)
        frames = await _ask(ws)
        assert frames[0]["error"]["code"] == "invalid_api_key"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1008


async def test_an_idle_socket_is_closed_when_its_key_is_revoked(ws_server):
    admin = AdminClient(ws_server.base_url)
    key = admin.key(admin.tenant(f"socket-idle-{time.monotonic_ns()}"))
    async with websockets.connect(_url(ws_server), additional_headers={"authorization": f"Bearer {key['key']}"}) as ws:
        await _ask(ws)
        assert admin.post(f"/admin/keys/{key['id']}/revoke").status_code == 200
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 15)  # no request sent: the server closes on its own
        assert closed.value.rcvd.code == 1008


async def test_frames_past_the_body_limit_are_refused(ws_server):
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with websockets.connect(_url(ws_server), additional_headers=headers, max_size=None) as ws:
        body = chat_body(2)
        body["messages"][0]["content"] = "x" * (65 * 1024)
        await ws.send(json.dumps(body))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1009  # message too big
    assert httpx.get(f"{ws_server.base_url}/health", timeout=5).status_code == 200


def _errors(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shipyard:request_errors_total":
                out[(sample.labels["error_type"], sample.labels["status"])] = sample.value
    return out


async def test_socket_requests_are_logged_and_counted(ws_server):
    headers = {"authorization": f"Bearer {ADMIN_KEY}", "x-request-id": f"wslog-{time.monotonic_ns()}"}
    before = _errors(ws_server)
    async with websockets.connect(_url(ws_server), additional_headers=headers) as ws:
        await _ask(ws)
        await ws.send(json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}))
        assert json.loads(await ws.recv())["error"]["code"] == "model_not_found"
        await ws.recv()
    request_id = headers["x-request-id"]
    ws_server.wait_for_log(f"{request_id}-1 WS /v1/chat/completions")
    ws_server.wait_for_log(f"{request_id}-2 WS /v1/chat/completions")
    after = _errors(ws_server)
    assert after.get(("not_found_error", "404"), 0) == before.get(("not_found_error", "404"), 0) + 1


async def test_a_refused_handshake_is_a_logged_401_not_a_server_error(ws_server):
    marker = f"refused-{time.monotonic_ns()}"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(_url(ws_server), additional_headers={"x-request-id": marker}):
            pass
    assert refused.value.response.status_code == 401
    ws_server.wait_for_log(f"{marker} WS /v1/chat/completions")
    line = next(line for line in ws_server.log().splitlines() if marker in line)
    assert "status=401" in line
    assert "ERROR" not in ws_server.log() and "Traceback" not in ws_server.log()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_disconnect_is_not_a_server_error(ws_server, stream):
    import aiohttp

    before = _errors(ws_server)
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 400, "stream": stream, "ignore_eos": True,
            "n": 8}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(f"{ws_server.base_url}/v1/completions", json=body,
                                    headers={"authorization": f"Bearer {ADMIN_KEY}"},
                                    timeout=aiohttp.ClientTimeout(total=0.3)) as response:
                await response.content.readline()
        except asyncio.TimeoutError:
            pass  # the non-streamed call: the client gives up before the answer
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = _errors(ws_server)
        if after.get(("client_disconnected", "499"), 0) > before.get(("client_disconnected", "499"), 0):
            break
        await asyncio.sleep(0.1)
    assert after.get(("client_disconnected", "499"), 0) == before.get(("client_disconnected", "499"), 0) + 1
    assert not any(kind == "server_error" and after[(kind, status)] != before.get((kind, status), 0)
                   for kind, status in after)
