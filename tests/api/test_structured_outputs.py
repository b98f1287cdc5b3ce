"""Structured outputs against the tiny (random) model: whatever it would have written, the
grammar-constrained decoder makes the answer parse and validate. The official client's
`parse` with a pydantic model, json_object, streamed json_schema, and the refusals."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pydantic
import pytest

from conftest import MODEL_NAME
from openapi_schema import validate

ASK = [{"role": "user", "content": "Describe a person as JSON."}]


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=16)
    age: int = pydantic.Field(ge=0, le=120)
    mood: Literal["happy", "sad", "calm"]
    tags: list[Literal["a", "b", "c"]] = pydantic.Field(max_length=3)


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                           "rain": {"type": "boolean"},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 14}},
          "required": ["city", "rain", "days"], "additionalProperties": False}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parse_with_a_pydantic_model_always_validates(client, seed):
    completion = client.chat.completions.parse(model=MODEL_NAME, messages=ASK, response_format=Person,
                                               max_tokens=300, temperature=1.0, seed=seed)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)  # the client's own pydantic validation passed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_object_is_always_a_json_object(client, seed):
    response = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=ASK, response_format={"type": "json_object"}, max_tokens=480, temperature=0.7,
        seed=seed)
    validate("CreateChatCompletionResponse", response.http_response.json())
    choice = response.parse().choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


def test_streamed_json_schema_validates_and_matches_unstreamed(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}
    kwargs = dict(model=MODEL_NAME, messages=ASK, response_format=fmt, max_tokens=200, temperature=0)
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert client.chat.completions.create(**kwargs).choices[0].message.content == text


async def test_constrained_and_free_rows_in_one_batch(async_client):
    import asyncio

    async def constrained(seed: int):
        fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}
        out = await async_client.chat.completions.create(model=MODEL_NAME, messages=ASK, response_format=fmt,
                                                         max_tokens=200, temperature=0.9, seed=seed)
        jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)

    async def free():
        out = await async_client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=40,
                                                         temperature=0, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 40  # untouched by a grammar, which would have ended it

    await asyncio.gather(*(constrained(s) for s in range(4)), *(free() for _ in range(4)))


@pytest.mark.parametrize("fmt, code", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}, "invalid_schema"),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": SCHEMA}}, "invalid_value"),
    ({"type": "json_schema"}, "invalid_value"),
    ({"type": "xml"}, "invalid_value"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        f"p{i}": {"type": "string", "description": "x" * 1000} for i in range(80)}}}}, "schema_too_large"),
])
def test_bad_response_formats_are_clear_400s(client, fmt, code):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=ASK, response_format=fmt, max_tokens=5)
    assert caught.value.body["code"] == code
    assert caught.value.body["param"].startswith("response_format")


def test_a_text_response_format_is_plain_text(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=ASK, response_format={"type": "text"},
                                         max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 8
