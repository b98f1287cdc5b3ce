"""Tool calling against the tiny (random) model with the official client: forced calls always
name a declared tool with schema-valid arguments (the decoder guarantees it), streamed in
OpenAI's delta shape; tool-result turns are accepted; bad tool specs are clear 400s."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from conftest import MODEL_NAME, ServerProcess, deployment
from openapi_schema import validate

ASK = [{"role": "user", "content": "What is the weather in Paris, and what time is it?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}, "hours24": {"type": "boolean"}},
         "required": ["zone", "hours24"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": CLOCK}},
         {"type": "function", "function": {"name": "ping", "description": "No arguments"}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK,
           "ping": {"type": "object", "properties": {}, "additionalProperties": False}}


@pytest.fixture(scope="module")
def client(long_context_model, tmp_path_factory):
    config = {"auth": "disabled", "deployments": {MODEL_NAME: deployment(long_context_model)}}
    with ServerProcess(config, tmp_path_factory.mktemp("tools")) as server:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
            yield c


def _streamed_calls(chunks) -> tuple[dict[int, dict], str, str | None]:
    calls: dict[int, dict] = {}
    content, finish = "", None
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
            if piece.id:
                assert call["id"] is None, "a call's id comes once, with its first delta"
                call["id"] = piece.id
            if piece.function and piece.function.name:
                call["name"] = piece.function.name
            call["arguments"] += (piece.function.arguments or "") if piece.function else ""
        finish = chunk.choices[0].finish_reason or finish
    return calls, content, finish


def _check_call(name: str, arguments: str) -> None:
    assert name in SCHEMAS
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_required_streamed_calls_are_declared_tools_with_valid_arguments(client, seed):
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="required",
                                                 max_tokens=480, temperature=1.0, seed=seed, stream=True))
    calls, content, finish = _streamed_calls(chunks)
    assert finish == "tool_calls" and content == ""
    assert calls and sorted(calls) == list(range(len(calls)))
    for call in calls.values():
        assert call["id"].startswith("call_")
        _check_call(call["name"], call["arguments"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_named_streamed_call_is_exactly_that_tool(client, seed):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice=choice,
                                                 max_tokens=200, temperature=1.0, seed=seed, stream=True))
    calls, _, finish = _streamed_calls(chunks)
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    _check_call("get_weather", calls[0]["arguments"])


def test_non_streamed_call_and_a_tool_result_turn(client):
    response = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=200, temperature=0)
    validate("CreateChatCompletionResponse", response.http_response.json())
    message = response.parse().choices[0].message
    assert response.parse().choices[0].finish_reason == "tool_calls" and message.content is None
    (call,) = message.tool_calls
    _check_call(call.function.name, call.function.arguments)
    # the conversation goes on with the call and its result
    turns = [*ASK, message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"time": "12:00"})}]
    follow = client.chat.completions.create(model=MODEL_NAME, messages=turns, tools=TOOLS, max_tokens=8,
                                            temperature=0, extra_body={"ignore_eos": True})
    assert follow.choices[0].message.role == "assistant"
    bare = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=1)
    assert follow.usage.prompt_tokens > bare.usage.prompt_tokens  # the call and its result were rendered


def test_parallel_calls_off_means_one_call(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="required",
                                         parallel_tool_calls=False, max_tokens=200, temperature=1.0, seed=7)
    assert len(out.choices[0].message.tool_calls) == 1


def test_tool_choice_none_writes_text(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="none",
                                         max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert out.choices[0].message.tool_calls is None and out.usage.completion_tokens == 6


def test_auto_keeps_any_call_it_starts_well_formed(client):
    """With auto, the answer is free text; should the model open a call, the call is constrained."""
    for seed in range(3):
        out = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=60,
                                             temperature=1.0, seed=seed)
        for call in out.choices[0].message.tool_calls or []:
            _check_call(call.function.name, call.function.arguments)


@pytest.mark.parametrize("change, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x"}}] * 2}, "tools[1].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array", "items": {
        "type": "nonsense"}}}}], "tool_choice": "required"}, "tools"),
])
def test_bad_tool_requests_are_clear_400s(client, change, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": MODEL_NAME, "messages": ASK, "max_tokens": 5, **change})
    assert caught.value.body["param"] == param


def test_a_tool_turn_without_its_call_id_is_a_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, max_tokens=2,
                                       messages=[*ASK, {"role": "tool", "content": "12:00"}])
