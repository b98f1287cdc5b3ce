"""Tools and response formats passed through to upstream engines, against vLLM's real wire format
(a fake replaying `serving_chat.py`'s streamed `DeltaToolCall`s): the official client sees the
upstream's calls as OpenAI deltas, the exact cache replays them with fresh call ids, each flavor
gets its own dialect, and a flavor that cannot is a 400 naming the deployment."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import ServerProcess
from fake_upstream import FakeVLLM
from openapi_schema import validate
from shipyard.engines.base import ChatMessage, GenerationRequest, Prompt, SamplingParams
from shipyard.engines.errors import InvalidRequestError
from shipyard.engines.structured import ResponseFormat, Tool, ToolCall
from shipyard.engines.upstream import OpenAIHTTPEngine, OpenAIHTTPEngineConfig

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def upstream():
    fake = FakeVLLM("up").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def client(upstream, tmp_path_factory):
    config = {"auth": "disabled", "deployments": {"up": {"engine": "openai_http", "url": upstream.url,
                                                         "flavor": "vllm", "upstream_model": "m"}}}
    with ServerProcess(config, tmp_path_factory.mktemp("upstream-tools")) as server:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
            yield c


def test_streamed_upstream_tool_calls_reach_the_client(client, upstream):
    chunks = list(client.chat.completions.create(model="up", messages=ASK, tools=TOOLS, tool_choice="required",
                                                 parallel_tool_calls=False, stream=True, temperature=0.5))
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    body = upstream.requests[-1]
    assert body["tools"] == TOOLS and body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    pieces = [p for c in chunks if c.choices for p in c.choices[0].delta.tool_calls or []]
    assert pieces[0].id.startswith("chatcmpl-tool-") and pieces[0].function.name == "get_weather"
    assert "".join(p.function.arguments or "" for p in pieces) == '{"city": "Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_a_named_choice_and_tool_turns_go_upstream_as_sent(client, upstream):
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = client.chat.completions.create(model="up", messages=ASK, tools=TOOLS, tool_choice=named)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert upstream.requests[-1]["tool_choice"] == named
    turns = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "22 C"}]
    client.chat.completions.create(model="up", messages=turns, tools=TOOLS, tool_choice="none", max_tokens=2)
    sent = upstream.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[1]["content"] is None
    assert sent[2] == {"role": "tool", "content": "22 C", "tool_call_id": call.id}


def test_the_exact_cache_replays_calls_with_fresh_ids(client, upstream):
    kwargs = dict(model="up", messages=[{"role": "user", "content": "cache me"}], tools=TOOLS,
                  tool_choice="required", temperature=0)
    first = client.chat.completions.with_raw_response.create(**kwargs)
    served = upstream.served
    again = client.chat.completions.with_raw_response.create(**kwargs)
    assert again.headers["x-shipyard-cache"] == "hit" and upstream.served == served
    a, b = first.parse().choices[0].message.tool_calls[0], again.parse().choices[0].message.tool_calls[0]
    assert a.function == b.function and a.id != b.id
    other_tools = [{"type": "function", "function": {"name": "get_time"}}]
    client.chat.completions.create(**{**kwargs, "tools": other_tools})
    assert upstream.served == served + 1  # other tools: another question, not a hit


def test_response_format_passes_through(client, upstream):
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True}}
    out = client.chat.completions.create(model="up", messages=ASK, response_format=fmt)
    assert json.loads(out.choices[0].message.content) == {"answer": "up"}
    assert upstream.requests[-1]["response_format"] == fmt


def _request(**params) -> GenerationRequest:
    tools = [Tool("get_weather", parameters={"type": "object"})]
    messages = [ChatMessage("user", "hi"), ChatMessage("assistant", "", tool_calls=[ToolCall("c1", "get_weather", "{}")]),
                ChatMessage("tool", "ok", tool_call_id="c1")]
    return GenerationRequest("g", Prompt(messages=messages, tools=tools), SamplingParams(**params))


@pytest.mark.parametrize("flavor", ["tgi", "triton", "trtllm", "llamacpp_python"])
def test_each_flavor_gets_its_dialect_or_a_clear_refusal(flavor):
    engine = OpenAIHTTPEngine(OpenAIHTTPEngineConfig(url="http://127.0.0.1:9", flavor=flavor), "dep")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    shaped = _request(response_format=ResponseFormat("json_schema", schema, "a"), tool_choice="auto")
    if flavor in ("triton", "trtllm"):
        with pytest.raises(InvalidRequestError, match="'dep'"):
            engine.request_body(shaped)
        return
    if flavor == "llamacpp_python":  # a response format, but no tool calls
        with pytest.raises(InvalidRequestError, match="cannot call tools"):
            engine.request_body(shaped)
        _, body = engine.request_body(_request(response_format=ResponseFormat("json_object"), tool_choice="none"))
        assert body["response_format"] == {"type": "json_object"} and "tools" not in body
        return
    _, body = engine.request_body(shaped)
    assert body["response_format"] == {"type": "json", "value": schema}  # TGI's grammar
    assert body["tools"][0]["function"]["name"] == "get_weather" and body["tool_choice"] == "auto"
    assert body["messages"][1]["tool_calls"][0]["id"] == "c1" and body["messages"][2]["tool_call_id"] == "c1"
