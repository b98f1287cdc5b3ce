"""Every documented error: the right status, OpenAI's error body, and the client's own exception."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import MODEL_NAME, ServerProcess, deployment
from openapi_schema import validate

CHAT = [{"role": "user", "content": "hi"}]


def _post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", timeout=30, **kwargs)


def _assert_error(response: httpx.Response, status: int, param: str | None = "__any__", code: str | None = "__any__"):
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    if param != "__any__":
        assert body["error"]["param"] == param
    if code != "__any__":
        assert body["error"]["code"] == code
    assert response.headers["x-request-id"]
    return body["error"]


def test_malformed_json(server):
    response = _post(server, "/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                     headers={"content-type": "application/json"})
    error = _assert_error(response, 400)
    assert "JSON" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL_NAME, "messages": "hello"}, "messages"),
    ({"model": MODEL_NAME, "messages": CHAT, "temperature": "hot"}, "temperature"),
    ({"model": MODEL_NAME, "messages": CHAT, "n": "two"}, "n"),
    ({"model": MODEL_NAME, "messages": CHAT, "temperature": 5}, "temperature"),
    ({"messages": CHAT}, "model"),
    ({"model": MODEL_NAME, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
])
def test_wrong_types_and_ranges(server, body, param):
    error = _assert_error(_post(server, "/v1/chat/completions", json=body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_unknown_model(server, client):
    error = _assert_error(_post(server, "/v1/chat/completions", json={"model": "nope", "messages": CHAT}), 404,
                          param="model", code="model_not_found")
    assert "nope" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)
    _assert_error(httpx.get(f"{server.base_url}/v1/models/nope"), 404, code="model_not_found")


def test_prompt_longer_than_context(server, client):
    long_prompt = "word " * 2000  # the tiny model's context is 512 tokens
    error = _assert_error(_post(server, "/v1/completions", json={"model": MODEL_NAME, "prompt": long_prompt}), 400,
                          code="context_length_exceeded")
    assert "512" in error["message"]
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=600)
    assert "512" in str(excinfo.value) and "600" in str(excinfo.value)


@pytest.mark.parametrize("max_tokens", [0, -3])
def test_max_tokens_not_positive(server, max_tokens):
    _assert_error(_post(server, "/v1/chat/completions",
                        json={"model": MODEL_NAME, "messages": CHAT, "max_tokens": max_tokens}), 400,
                  param="max_tokens")


def test_empty_messages(server, client):
    error = _assert_error(_post(server, "/v1/chat/completions", json={"model": MODEL_NAME, "messages": []}), 400)
    assert "at least one message" in error["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=[])


def test_oversize_body(server):
    huge = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]}
    error = _assert_error(_post(server, "/v1/chat/completions", json=huge), 413, code="request_too_large")
    assert "limit" in error["message"]


def test_oversize_chunked_body(server):
    def chunks():
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 100_000
        yield b'"}]}'

    _assert_error(_post(server, "/v1/chat/completions", content=chunks(),
                        headers={"content-type": "application/json"}), 413)


def test_unsupported_features_are_clear_400s(server):
    for body, param in [
        ({"model": MODEL_NAME, "messages": CHAT, "tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"model": MODEL_NAME, "prompt": "x", "suffix": "y"}, "suffix"),
        ({"model": MODEL_NAME, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, "messages"),
    ]:
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        _assert_error(_post(server, path, json=body), 400, param=param)


def test_unknown_route_and_method(server):
    _assert_error(httpx.get(f"{server.base_url}/v1/nothing-here"), 404)
    _assert_error(httpx.get(f"{server.base_url}/v1/chat/completions"), 405)


def test_token_ids_outside_vocabulary(server):
    _assert_error(_post(server, "/v1/completions", json={"model": MODEL_NAME, "prompt": [1, 2, 10**9]}), 400,
                  param="prompt")


@pytest.fixture(scope="module")
def full_queue_server(tiny_model, tmp_path_factory):
    """max_waiting 0: every generation request finds the queue full."""
    proc = ServerProcess({"auth": "disabled", "deployments": {MODEL_NAME: deployment(tiny_model, max_waiting=0)},
                          "server": {"retry_after_s": 2}}, tmp_path_factory.mktemp("fullq"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_queue_full_is_503_with_retry_after(full_queue_server):
    response = _post(full_queue_server, "/v1/chat/completions", json={"model": MODEL_NAME, "messages": CHAT})
    _assert_error(response, 503, code="server_overloaded")
    assert response.headers["retry-after"] == "2"
    client = openai.OpenAI(base_url=f"{full_queue_server.base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model=MODEL_NAME, messages=CHAT)
    assert excinfo.value.status_code == 503
