"""The WebSocket transport sends the same chunk objects as SSE."""

from __future__ import annotations

import json

import pytest
import websockets

from conftest import MODEL_NAME
from openapi_schema import validate


async def _exchange(ws, body: dict) -> list:
    await ws.send(json.dumps(body))
    events = []
    while True:
        message = await ws.recv()
        if message == "[DONE]":
            return events
        events.append(json.loads(message))


async def test_chat_over_websocket_matches_sse(server, async_client):
    url = server.base_url.replace("http", "ws") + "/v1/chat/completions"
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
            "temperature": 0, "stream_options": {"include_usage": True}}
    async with websockets.connect(url) as ws:
        events = await _exchange(ws, body)
        for event in events:
            validate("CreateChatCompletionStreamResponse", event)
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert events[-1]["usage"]["completion_tokens"] >= 1
        # The socket stays open: an error, then another request on the same connection.
        error_events = await _exchange(ws, {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        assert error_events[0]["error"]["code"] == "model_not_found"
        validate("ErrorResponse", error_events[0])
        bad = await _exchange(ws, {"model": MODEL_NAME, "messages": []})
        assert bad[0]["error"]["type"] == "invalid_request_error"
        completions = await _exchange(ws, {**body, "max_tokens": 3})
        assert completions[-1]["usage"]["completion_tokens"] >= 1
    sse = await async_client.chat.completions.create(model=MODEL_NAME, messages=body["messages"], max_tokens=10,
                                                     temperature=0)
    assert text == sse.choices[0].message.content


async def test_completions_over_websocket(server):
    url = server.base_url.replace("http", "ws") + "/v1/completions"
    async with websockets.connect(url) as ws:
        events = await _exchange(ws, {"model": MODEL_NAME, "prompt": "x", "max_tokens": 4, "ignore_eos": True})
    assert sum(1 for e in events if e["choices"][0]["finish_reason"] == "length") == 1


@pytest.mark.parametrize("payload", ["not json", "{\"model\": 3}"])
async def test_websocket_bad_input(server, payload):
    url = server.base_url.replace("http", "ws") + "/v1/completions"
    async with websockets.connect(url) as ws:
        await ws.send(payload)
        error = json.loads(await ws.recv())
        assert error["error"]["type"] == "invalid_request_error"
        assert await ws.recv() == "[DONE]"


async def test_structured_output_over_websocket(server):
    url = server.base_url.replace("http", "ws") + "/v1/chat/completions"
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
    async with websockets.connect(url) as ws:
        events = await _exchange(ws, body)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert json.loads(text) in ({"ok": True}, {"ok": False})
