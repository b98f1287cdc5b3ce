"""The official openai client, sync and async, streaming and not, against a real server."""

from __future__ import annotations

import asyncio

import pytest

from conftest import MODEL_NAME
from openapi_schema import validate

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is a list?"}]


def _dump(obj) -> dict:
    return obj.model_dump(exclude_unset=True)


def validate_completion_chunk(chunk: dict) -> None:
    """Streamed legacy completions reuse CreateCompletionResponse, whose finish_reason the spec
    marks non-null although OpenAI sends null until the last chunk: check those with a stand-in."""
    for choice in chunk["choices"]:
        if choice["finish_reason"] is None:
            choice = {**choice, "finish_reason": "length"}
        validate("CreateCompletionResponse", {**chunk, "choices": [choice]})


def test_chat_completion_non_streamed(client, tokenizer):
    response = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    completion = response.parse()
    validate("CreateChatCompletionResponse", response.http_response.json())
    assert response.headers["x-request-id"]
    assert float(response.headers["x-shipyard-ttft-ms"]) > 0
    assert float(response.headers["x-shipyard-tokens-per-second"]) > 0
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    expected_prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    if hasattr(expected_prompt, "keys"):
        expected_prompt = expected_prompt["input_ids"]
    assert completion.usage.prompt_tokens == len(expected_prompt)
    assert completion.usage.completion_tokens == 12
    assert completion.usage.total_tokens == len(expected_prompt) + 12


def test_chat_streamed_matches_non_streamed(client):
    kwargs = dict(model=MODEL_NAME, messages=CHAT, max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", _dump(chunk))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1


def test_streamed_without_usage_option_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=4, stream=True))
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_completions_non_streamed_and_streamed(client, tokenizer):
    response = client.completions.with_raw_response.create(
        model=MODEL_NAME, prompt="def parse(text):", max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    validate("CreateCompletionResponse", response.http_response.json())
    completion = response.parse()
    assert completion.usage.prompt_tokens == len(tokenizer.encode("def parse(text):"))
    assert completion.usage.completion_tokens == 10
    streamed = list(client.completions.create(model=MODEL_NAME, prompt="def parse(text):", max_tokens=10,
                                              temperature=0, stream=True, extra_body={"ignore_eos": True}))
    for chunk in streamed:
        validate_completion_chunk(_dump(chunk))
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text


def test_n_choices(client):
    extra = {"ignore_eos": True}
    completion = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, n=2, max_tokens=8, seed=3,
                                                extra_body=extra)
    validate("CreateChatCompletionResponse", _dump(completion))
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.usage.completion_tokens == 16
    streamed = list(client.chat.completions.create(model=MODEL_NAME, messages=CHAT, n=2, max_tokens=8, seed=3,
                                                   stream=True, extra_body=extra))
    texts = {0: "", 1: ""}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {c.index: c.message.content for c in completion.choices}


def test_n_choices_differ_and_count_tokens(client):
    completion = client.completions.create(model=MODEL_NAME, prompt="The", n=3, max_tokens=6, temperature=1.0,
                                           seed=11, extra_body={"ignore_eos": True})
    assert len(completion.choices) == 3
    assert completion.usage.completion_tokens == 18
    assert len({c.text for c in completion.choices}) > 1


def test_seed_reproducible(client):
    kwargs = dict(model=MODEL_NAME, messages=CHAT, max_tokens=20, temperature=1.0, top_p=0.95, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    other = client.chat.completions.create(**{**kwargs, "seed": 99}).choices[0].message.content
    assert first == second
    assert first != other


async def test_seed_reproducible_whatever_shares_the_batch(async_client):
    kwargs = dict(model=MODEL_NAME, messages=CHAT, max_tokens=24, temperature=1.0, seed=77,
                  extra_body={"ignore_eos": True})
    alone = (await async_client.chat.completions.create(**kwargs)).choices[0].message.content
    noise = [async_client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": f"x{i}"}],
                                                  max_tokens=30, temperature=1.0) for i in range(6)]
    results = await asyncio.gather(async_client.chat.completions.create(**kwargs), *noise)
    assert results[0].choices[0].message.content == alone


def test_stop_strings_are_exact_and_not_sent(client):
    base = client.completions.create(model=MODEL_NAME, prompt="import os", max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    assert len(base) > 6
    stop = base[3:6]  # a string the model is known to produce
    cut = client.completions.create(model=MODEL_NAME, prompt="import os", max_tokens=30, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == base[: base.index(stop)]
    streamed = list(client.completions.create(model=MODEL_NAME, prompt="import os", max_tokens=30, temperature=0,
                                              stop=stop, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed) == cut.text
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_max_tokens_respected(client):
    for max_tokens in (1, 5):
        completion = client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=max_tokens,
                                               extra_body={"ignore_eos": True})
        assert completion.usage.completion_tokens == max_tokens
        assert completion.choices[0].finish_reason == "length"


def test_logprobs_chat_and_completions(client):
    chat = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=5, logprobs=True,
                                          top_logprobs=3, extra_body={"ignore_eos": True})
    validate("CreateChatCompletionResponse", _dump(chat))
    content = chat.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6
    legacy = client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=4, logprobs=2,
                                       extra_body={"ignore_eos": True})
    validate("CreateCompletionResponse", _dump(legacy))
    assert len(legacy.choices[0].logprobs.tokens) == 4
    # the chosen token is always among them, so there may be logprobs + 1 (as OpenAI allows)
    for token, top in zip(legacy.choices[0].logprobs.tokens, legacy.choices[0].logprobs.top_logprobs):
        assert 2 <= len(top) <= 3 and token in top


def test_penalties_and_top_k_accepted(client):
    completion = client.chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=20, temperature=0, frequency_penalty=2.0, presence_penalty=1.0,
        extra_body={"top_k": 5, "repetition_penalty": 1.3, "ignore_eos": True})
    plain = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=20, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert completion.choices[0].message.content != plain.choices[0].message.content


def test_multiple_prompts(client):
    completion = client.completions.create(model=MODEL_NAME, prompt=["a", "b", "c"], max_tokens=3, n=2,
                                           extra_body={"ignore_eos": True})
    validate("CreateCompletionResponse", _dump(completion))
    assert [c.index for c in completion.choices] == list(range(6))
    assert completion.usage.completion_tokens == 18


def test_models(client, server):
    import httpx

    listing = httpx.get(f"{server.base_url}/v1/models").json()
    validate("ListModelsResponse", listing)
    assert [m["id"] for m in listing["data"]] == [MODEL_NAME]
    one = client.models.retrieve(MODEL_NAME)
    assert one.id == MODEL_NAME and one.object == "model"


async def test_async_client_streams(async_client):
    stream = await async_client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=8,
                                                        stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", _dump(chunk))
    assert chunks[-1].usage.completion_tokens >= 1
    completion = await async_client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=3,
                                                       extra_body={"ignore_eos": True})
    assert completion.usage.completion_tokens == 3


def test_request_id_is_echoed(client):
    response = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=2, extra_headers={"x-request-id": "my-trace-42"})
    assert response.headers["x-request-id"] == "my-trace-42"


@pytest.mark.parametrize("content", [[{"type": "text", "text": "What is "}, {"type": "text", "text": "a list?"}]])
def test_content_parts(client, content):
    """Text parts are the message's text, in order: the same prompt and answer as the joined string."""
    def ask(message_content):
        return client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": message_content}],
                                              max_tokens=6, temperature=0, extra_body={"ignore_eos": True})

    parts, joined = ask(content), ask("".join(part["text"] for part in content))
    assert parts.usage.prompt_tokens == joined.usage.prompt_tokens
    assert parts.choices[0].message.content == joined.choices[0].message.content
    assert parts.usage.completion_tokens == 6


def test_echo_prepends_the_prompt(client):
    completion = client.completions.create(model=MODEL_NAME, prompt="def main():", max_tokens=4, echo=True,
                                           extra_body={"ignore_eos": True})
    assert completion.choices[0].text.startswith("def main():")
    assert len(completion.choices[0].text) > len("def main():")
