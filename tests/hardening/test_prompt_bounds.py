"""Items 11, 12, 17 (surrogates), 23: prompts are bounded before tokenization and tokenized once
off the event loop; stop strings are bounded and matched in linear time; lone surrogates are 400s;
explicit nulls mean defaults."""

from __future__ import annotations

import threading

import httpx
import pytest

from conftest import MODEL_NAME


def test_a_huge_prompt_is_refused_before_tokenizing(server):
    body = {"model": MODEL_NAME, "prompt": "a" * 1_900_000, "max_tokens": 1}
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    many = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "word " * 40}] * 2000}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=many, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


async def test_tokenization_happens_once_and_off_the_event_loop(tiny_model):
    from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams
    from shipyard.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

    engine = TransformersEngine(TransformersEngineConfig(model=str(tiny_model), max_num_seqs=2), "tiny")
    await engine.start()
    try:
        calls = []
        encode = engine.encode_prompt

        def watched(prompt, add_special_tokens=True):
            calls.append(threading.current_thread() is threading.main_thread())
            return encode(prompt, add_special_tokens)

        engine.encode_prompt = watched
        prompt = Prompt(text="def f(x): return x")
        ids = await engine.encode(prompt)
        stream = engine.generate(GenerationRequest("gen-once", prompt, SamplingParams(max_tokens=2), 0.0, ids))
        async for _ in stream:
            pass
        assert calls == [False]  # once, and not on the loop's thread
    finally:
        await engine.stop()


@pytest.mark.parametrize("stop, ok", [
    (["x"] * 16, True), (["x"] * 17, False), (["y" * 256], True), (["y" * 257], False),
])
def test_stop_strings_are_bounded(server, stop, ok):
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2, "stop": stop}
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
    assert response.status_code == (200 if ok else 400), response.text
    if not ok:
        assert response.json()["error"]["param"] == "stop"


def test_stop_matching_is_linear_in_the_text():
    """Each character costs one automaton step (amortised), however many and however long the stops."""
    from shipyard.engines import stop_strings
    from shipyard.engines.stop_strings import StopStringMatcher, StopStrings

    stops = ["a" * 255 + chr(ord("b") + i) for i in range(16)]  # long shared prefixes: the worst case
    automaton = StopStrings(stops)
    steps = 0
    step = automaton.step

    def counting(state, char):
        nonlocal steps
        steps += 1
        return step(state, char)

    automaton.step = counting
    matcher = StopStringMatcher(automaton)
    text = ("a" * 300 + "z") * 40
    emitted = ""
    for i in range(0, len(text), 3):
        out, stop = matcher.feed(text[i: i + 3])
        assert stop is None
        emitted += out
    assert emitted + matcher.flush() == text
    assert steps == len(text)
    assert stop_strings  # the module the engine uses


def test_a_lone_surrogate_is_a_400(server):
    for path, body in (("/v1/completions", '{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 1}'),
                       ("/v1/completions", '{"model": "tiny", "prompt": ["ok", "\\udfff"], "max_tokens": 1}'),
                       ("/v1/chat/completions",
                        '{"model": "tiny", "messages": [{"role": "user", "content": "\\ud83d"}]}')):
        response = httpx.post(f"{server.base_url}{path}", content=body.encode(),
                              headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 400, response.text
        assert "surrogate" in response.json()["error"]["message"]


NULLABLE = ["n", "presence_penalty", "frequency_penalty", "stream", "stream_options", "temperature", "top_p",
            "stop", "seed", "logit_bias", "user", "top_k", "repetition_penalty", "ignore_eos", "stop_token_ids",
            "skip_special_tokens", "prompt_logprobs"]


def test_explicit_nulls_mean_defaults(server):
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi", "name": None}], "max_tokens": 2,
            **{field: None for field in NULLABLE}, "logprobs": None, "top_logprobs": None,
            "max_completion_tokens": None, "tools": None, "tool_choice": None, "response_format": None}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat, timeout=30)
    assert response.status_code == 200, response.text
    legacy = {"model": MODEL_NAME, "prompt": "x", **{field: None for field in NULLABLE}, "logprobs": None,
              "echo": None, "suffix": None, "best_of": None, "max_tokens": None}
    response = httpx.post(f"{server.base_url}/v1/completions", json=legacy, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 16  # null max_tokens: the default, 16
