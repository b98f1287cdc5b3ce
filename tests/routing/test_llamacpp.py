"""A real llama.cpp server (llama-cpp-python's, launched by the gateway) serving a GGUF conversion
of the tiny test model, end to end through the full gateway with the official `openai` client."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from conftest import ServerProcess
from gateway_support import ADMIN_KEY, call


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    from shipyard.optimize.gguf import convert_to_gguf

    return convert_to_gguf(tiny_model, "f16", out_file=tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf")


@pytest.fixture(scope="module")
def gateway(tiny_gguf, tmp_path_factory):
    replica = {"engine": "launch", "kind": "llamacpp", "model": str(tiny_gguf), "name": "llama",
               "poll_interval_s": 0.5, "args": ["--n_ctx", "512"]}
    config = {"deployments": {"tiny-gguf": {"replicas": [replica], "retries": 0}},
              "gateway": {"usage_flush_interval_s": 0.1}}
    with ServerProcess(config, tmp_path_factory.mktemp("llamacpp"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


@pytest.fixture()
def client(gateway):
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=60) as client:
        yield client


def _chat(**fields) -> dict:
    return {"model": "tiny-gguf", "messages": [{"role": "user", "content": "What is a list in Python?"}],
            "temperature": 0, **fields}


def test_the_gguf_conversion_names_the_byte_level_pre_tokenizer(tiny_gguf):
    from gguf import GGUFReader  # the converter's own package, from llama.cpp's sources

    reader = GGUFReader(tiny_gguf)
    field = reader.fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt-2"


def test_chat_streamed_and_not_agree_and_report_usage(client):
    reply = client.chat.completions.create(**_chat(max_tokens=8))
    assert reply.model == "tiny-gguf" and reply.choices[0].finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(**_chat(max_tokens=8), stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content  # temperature 0: the same tokens
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] \
        == [reply.choices[0].finish_reason]


def test_completions_honour_max_tokens_and_stop(client):
    plain = client.completions.create(model="tiny-gguf", prompt="def main", max_tokens=12, temperature=0)
    assert plain.usage.completion_tokens <= 12 and plain.choices[0].text
    # the upstream's /extras/tokenize counts the prompt exactly
    assert plain.usage.prompt_tokens == len(httpx.post(
        f"{client.base_url}".replace("/v1/", "") + "/tokenize", json={"model": "tiny-gguf", "prompt": "def main"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()["tokens"])
    text = plain.choices[0].text
    stop = text[len(text) // 2:][:2] or text[:1]
    stopped = client.completions.create(model="tiny-gguf", prompt="def main", max_tokens=12, temperature=0,
                                        stop=[stop])
    assert stop not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    assert text.startswith(stopped.choices[0].text)


def test_concurrent_streams_each_run_to_the_end(client):
    """llama-cpp-python cuts a stream short when another request arrives unless told not to
    (`--interrupt_requests false`, which the launcher sets): every stream gets its tokens."""
    from concurrent.futures import ThreadPoolExecutor

    def stream(_):
        chunks = list(client.chat.completions.create(**_chat(max_tokens=6, logit_bias={"0": -100}), stream=True,
                                                     stream_options={"include_usage": True}))
        return chunks[-1].usage.completion_tokens, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(stream, range(4)))
    assert all(tokens == 6 and text for tokens, text in results), results


def test_what_llama_cpp_cannot_do_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**_chat(max_tokens=2, n=2))
    assert error.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="tiny-gguf", prompt=[1, 2, 3], max_tokens=2)
    assert error.value.body["param"] == "prompt"


def test_the_launched_server_demands_its_token_and_shows_in_the_admin_view(gateway):
    state = call(gateway.base_url, ADMIN_KEY, "GET", "/admin/deployments").json()["data"][0]
    assert state["replicas"][0]["ready"] is True
    port = re.search(r"replica llama: pid=\d+ port=(\d+)", gateway.log()).group(1)
    direct = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert direct.status_code == 401
