"""The `openai_http` backend against vLLM's wire format (a fake that replays it): streams, usage,
load figures, token counting, and every kind of upstream failure as the engine error it means."""

from __future__ import annotations

import pytest

from fake_upstream import FakeVLLM
from shipyard.engines.base import ChatMessage, GenerationRequest, Prompt, SamplingParams
from shipyard.engines.errors import (
    EngineOverloadedError,
    EngineTimeoutError,
    EngineUnavailableError,
    InvalidRequestError,
    UpstreamError,
)
from shipyard.engines.upstream import OpenAIHTTPEngine, OpenAIHTTPEngineConfig


@pytest.fixture()
async def upstream():
    fake = FakeVLLM("a").start()
    yield fake
    fake.stop()


@pytest.fixture()
async def engine(upstream):
    eng = OpenAIHTTPEngine(OpenAIHTTPEngineConfig(url=upstream.url, flavor="vllm", upstream_model="m",
                                                  first_token_timeout_s=1, idle_timeout_s=1), "mine")
    await eng.start()
    yield eng
    await eng.stop()


async def _collect(engine, prompt: Prompt, **params):
    chunks = []
    async for chunk in engine.generate(GenerationRequest("gen-1", prompt, SamplingParams(**params))):
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("prompt", [Prompt(text="hello"), Prompt(messages=[ChatMessage("user", "hi")])],
                         ids=["completions", "chat"])
async def test_streams_text_usage_and_finish(engine, upstream, prompt):
    chunks = await _collect(engine, prompt, max_tokens=4, temperature=0)
    assert "".join(c.text for c in chunks) == "a-0 a-1 a-2 a-3 "
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].usage.prompt_tokens == 7
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    body = upstream.requests[-1]
    assert body["model"] == "m" and body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_load_health_and_context_come_from_the_upstream(engine):
    assert engine.ready() and await engine.health()
    stats = engine.stats()
    assert stats.num_waiting == 3 and stats.kv_cache_usage == pytest.approx(0.25)
    assert engine.model.max_model_len == 2048
    assert await engine.encode(Prompt(text="abc")) == [97, 98, 99]  # through vLLM's /tokenize


async def test_extras_a_flavor_does_not_take_are_refused(upstream):
    eng = OpenAIHTTPEngine(OpenAIHTTPEngineConfig(url=upstream.url, flavor="tgi"), "m")
    await eng.start()
    try:
        with pytest.raises(InvalidRequestError) as refused:
            eng.generate(GenerationRequest("g", Prompt(text="x"), SamplingParams(top_k=5)))
        assert refused.value.param == "top_k"
        with pytest.raises(InvalidRequestError):
            eng.generate(GenerationRequest("g", Prompt(text="x"), SamplingParams(n=2)))
    finally:
        await eng.stop()
    llama = OpenAIHTTPEngine(OpenAIHTTPEngineConfig(url=upstream.url, flavor="llamacpp"), "m")
    _, body = llama.request_body(GenerationRequest("g", Prompt(text="x"), SamplingParams(repetition_penalty=1.2)))
    assert body["repeat_penalty"] == 1.2 and "repetition_penalty" not in body
    # llama.cpp samples with top-k 40 and min-p 0.05 unless told: an OpenAI request gets neither
    assert body["top_k"] == 0 and body["min_p"] == 0.0
    _, body = llama.request_body(GenerationRequest("g", Prompt(text="x"), SamplingParams(top_k=7)))
    assert body["top_k"] == 7
    python_server = OpenAIHTTPEngine(OpenAIHTTPEngineConfig(url=upstream.url, flavor="llamacpp_python"), "m")
    _, body = python_server.request_body(GenerationRequest("g", Prompt(text="x"), SamplingParams()))
    assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (0, 0.0, 1.0)  # its defaults: 40, 0.05, 1.1
    with pytest.raises(InvalidRequestError):  # it has no ignore_eos
        python_server.request_body(GenerationRequest("g", Prompt(text="x"), SamplingParams(ignore_eos=True)))


@pytest.mark.parametrize("mode, error", [
    ("bad_request", InvalidRequestError), ("overloaded", EngineOverloadedError), ("error500", UpstreamError),
    ("hang", EngineTimeoutError),
])
async def test_upstream_failures_before_the_first_token(engine, upstream, mode, error):
    upstream.mode = mode
    with pytest.raises(error):
        await _collect(engine, Prompt(text="x"), max_tokens=3)
    assert engine.inflight == 0


async def test_a_refused_connection_is_unavailable(tmp_path):
    from conftest import free_port

    eng = OpenAIHTTPEngine(OpenAIHTTPEngineConfig(url=f"http://127.0.0.1:{free_port()}", flavor="vllm"), "m")
    await eng.start()
    try:
        assert not eng.ready()
        with pytest.raises(EngineUnavailableError):
            await _collect(eng, Prompt(text="x"))
    finally:
        await eng.stop()


async def test_a_stream_that_breaks_after_tokens_ends_with_an_error_chunk(engine, upstream):
    upstream.mode = "die_mid_stream"
    chunks = await _collect(engine, Prompt(text="x"), max_tokens=5)
    assert "".join(c.text for c in chunks) == "a-0 a-1 "
    assert chunks[-1].finish_reason == "error" and chunks[-1].usage.completion_tokens == 2


@pytest.mark.parametrize("flavor", ["tgi", "llamacpp"])
async def test_each_servers_error_body_and_load_metrics(flavor):
    fake = FakeVLLM("z", flavor=flavor).start()
    eng = OpenAIHTTPEngine(OpenAIHTTPEngineConfig(url=fake.url, flavor=flavor, upstream_model="m"), "mine")
    await eng.start()
    try:
        stats = eng.stats()
        assert stats.num_waiting == 3 and stats.num_running == 1
        assert "".join(c.text for c in await _collect(eng, Prompt(text="x"), max_tokens=2)) == "z-0 z-1 "
        fake.mode = "bad_request"
        with pytest.raises(InvalidRequestError) as refused:
            await _collect(eng, Prompt(text="x"), max_tokens=2)
        assert "maximum context length" in str(refused.value)
    finally:
        await eng.stop()
        fake.stop()


async def test_triton_generate_extension():
    from shipyard.engines.upstream import TritonEngine, TritonEngineConfig

    fake = FakeVLLM("t", flavor="triton").start()
    eng = TritonEngine(TritonEngineConfig(url=fake.url, triton_model="ensemble", max_model_len=1024), "mine")
    await eng.start()
    try:
        assert eng.ready() and eng.stats().num_waiting == 3
        chunks = await _collect(eng, Prompt(text="hello"), max_tokens=3, top_k=4, stop=["\n"], seed=7)
        assert "".join(c.text for c in chunks) == "t-0 t-1 t-2 "
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 3
        body = fake.requests[-1]
        assert body == {"text_input": "hello", "stream": True, "max_tokens": 3, "temperature": 1.0, "top_p": 1.0,
                        "top_k": 4, "stop_words": ["\n"], "random_seed": 7}
        with pytest.raises(InvalidRequestError):  # chat needs a local chat template
            eng.generate(GenerationRequest("g", Prompt(messages=[ChatMessage("user", "hi")]), SamplingParams()))
        fake.mode = "error500"
        with pytest.raises(UpstreamError):
            await _collect(eng, Prompt(text="x"), max_tokens=2)
    finally:
        await eng.stop()
        fake.stop()
