"""Items 1, 2, 4 of the hardening issue: no stream is ever shared, every generated token is billed,
and one call cannot carry unbounded sequences."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import httpx

from conftest import MODEL_NAME
from gateway_support import call

SSE_BODY = {"model": MODEL_NAME, "stream": True, "temperature": 0, "ignore_eos": True}


async def _read_stream(session, url, body, headers, stop_after: int | None = None) -> tuple[int, str, list]:
    """(chunks read, text, error events); stops early (closing the connection) after `stop_after`."""
    chunks, text, errors = 0, "", []
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(event)
                continue
            if event["choices"]:
                chunks += 1
                text += event["choices"][0].get("text") or ""
            if stop_after is not None and chunks >= stop_after:
                break
    return chunks, text, errors


async def test_same_client_request_id_never_merges_streams(server):
    """Two requests with one x-request-id: each gets exactly its own tokens; closing one leaves the other whole."""
    url = f"{server.base_url}/v1/completions"
    headers = {"x-request-id": "same-id-from-two-clients"}
    async with aiohttp.ClientSession() as session:
        first = _read_stream(session, url, {**SSE_BODY, "prompt": "def alpha(", "max_tokens": 40}, headers)
        second = _read_stream(session, url, {**SSE_BODY, "prompt": "class Beta:", "max_tokens": 25}, headers)
        (n1, text1, e1), (n2, text2, e2) = await asyncio.gather(first, second)
        assert not e1 and not e2
        # the number of chunks carrying a token is each request's own max_tokens (+ the finish chunk)
        alone1 = await _read_stream(session, url, {**SSE_BODY, "prompt": "def alpha(", "max_tokens": 40}, {})
        alone2 = await _read_stream(session, url, {**SSE_BODY, "prompt": "class Beta:", "max_tokens": 25}, {})
        assert text1 == alone1[1] and text2 == alone2[1]
        # cancel one of two same-id streams: the other still finishes whole
        cut = _read_stream(session, url, {**SSE_BODY, "prompt": "def alpha(", "max_tokens": 200}, headers,
                           stop_after=3)
        whole = _read_stream(session, url, {**SSE_BODY, "prompt": "class Beta:", "max_tokens": 25}, headers)
        _, (_, text_whole, errors) = await asyncio.gather(cut, whole)
        assert text_whole == alone2[1] and not errors


async def _usage_for(admin, key_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = admin.get("/admin/usage", params={"key_id": key_id}).json()["data"]
        if rows and rows[0]["completion_tokens"] > 0:
            return rows[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no usage recorded for {key_id}")


async def test_a_stream_closed_early_is_billed_and_counted(auth_server, admin):
    tenant = admin.tenant("billed-early-close")
    key = admin.key(tenant, tpm=3000)
    url = f"{auth_server.base_url}/v1/completions"
    headers = {"authorization": f"Bearer {key['key']}"}
    async with aiohttp.ClientSession() as session:
        read, _, _ = await _read_stream(session, url, {**SSE_BODY, "prompt": "x", "max_tokens": 400}, headers,
                                        stop_after=30)
    assert read == 30
    usage = await _usage_for(admin, key["id"])
    assert usage["completion_tokens"] >= 30 and usage["requests"] == 1
    # the tokens count against the key's tokens-per-minute window too: 3000 - (prompt + >= 30) left
    response = call(auth_server.base_url, key["key"], "POST", "/v1/completions",
                    json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 1})
    remaining = int(response.headers["x-ratelimit-remaining-tokens"])
    assert remaining <= 3000 - 30 - 1 - 2


def test_prompts_times_n_is_bounded(server):
    too_many = {"model": MODEL_NAME, "prompt": ["a"] * 33, "n": 2, "max_tokens": 1}  # 66 > 64
    response = httpx.post(f"{server.base_url}/v1/completions", json=too_many, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_sequences"
    at_bound = {"model": MODEL_NAME, "prompt": ["a"] * 32, "n": 2, "max_tokens": 1}
    response = httpx.post(f"{server.base_url}/v1/completions", json=at_bound, timeout=60)
    assert response.status_code == 200 and len(response.json()["choices"]) == 64


def test_every_prompt_is_charged_to_the_limits(auth_server, admin):
    key = admin.key(admin.tenant("one-rpm"), rpm=1)["key"]
    response = call(auth_server.base_url, key, "POST", "/v1/completions",
                    json={"model": MODEL_NAME, "prompt": ["a"] * 2, "max_tokens": 1})
    assert response.status_code == 429  # two prompts are two requests
    assert "needs 2 requests" in response.json()["error"]["message"]


async def test_admission_counts_sequences():
    from shipyard.gateway.admission import TieredAdmission

    gate = TieredAdmission(max_inflight=4, max_queue=8, queue_timeout_s=5)
    await gate.enter(tier=0, weight=3)
    small = asyncio.ensure_future(gate.enter(tier=0, weight=2))  # 3 + 2 > 4: waits
    await asyncio.sleep(0.01)
    assert not small.done() and gate.waiting == 1
    gate.leave(3)
    await small
    assert gate.inflight == 2
    huge = asyncio.ensure_future(gate.enter(tier=0, weight=100))  # larger than all slots: runs alone
    await asyncio.sleep(0.01)
    assert not huge.done()
    gate.leave(2)
    await huge
    assert gate.inflight == 4
    gate.leave(100)
    assert gate.inflight == 0
