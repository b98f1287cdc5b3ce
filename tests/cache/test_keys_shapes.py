"""Cache keys and output shapes: a request without tools or a response format keeps the key it
had before shapes existed (an upgrade does not orphan every cached answer), while tools, the tool
choice and the response format each make another question."""

from __future__ import annotations

import dataclasses

from shipyard.cache import keys
from shipyard.engines.base import ChatMessage, GenerationRequest, Prompt, SamplingParams
from shipyard.engines.structured import ResponseFormat, Tool


def _key(request: GenerationRequest) -> tuple[str, str]:
    return keys.canonical_params(request.params), keys.canonical_prompt(request)


def test_plain_requests_keep_their_keys_and_shapes_split_them():
    plain = GenerationRequest("r", Prompt(messages=[ChatMessage("user", "hi")]), SamplingParams(temperature=0))
    params, prompt = _key(plain)
    assert prompt == '{"text":null,"ids":null,"messages":[["user","hi"]]}'
    assert "tool_choice" not in params and "response_format" not in params
    as_api_sends = dataclasses.replace(plain, params=dataclasses.replace(plain.params, tool_choice="none"))
    assert _key(as_api_sends) == (params, prompt)  # no tools: the tool choice means nothing
    with_ids = dataclasses.replace(plain, prompt_ids=[1, 2, 3])
    assert keys.canonical_prompt(with_ids) == '{"ids":[1,2,3]}'

    tooled = dataclasses.replace(plain, prompt=Prompt(messages=[ChatMessage("user", "hi")], tools=[Tool("f")]))
    variants = [tooled,
                dataclasses.replace(tooled, prompt=Prompt(messages=[ChatMessage("user", "hi")], tools=[Tool("g")])),
                dataclasses.replace(tooled, params=dataclasses.replace(tooled.params, tool_choice="none")),
                dataclasses.replace(tooled, params=dataclasses.replace(tooled.params, parallel_tool_calls=False)),
                dataclasses.replace(plain, params=dataclasses.replace(plain.params,
                                                                      response_format=ResponseFormat("json_object")))]
    assert len({_key(r) for r in [plain, *variants]}) == len(variants) + 1
    assert keys.prompt_text(tooled) is None and keys.prompt_text(plain) == "hi"  # no semantic reuse with tools
