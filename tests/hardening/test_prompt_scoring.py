"""Items 22 and 24: prompt scoring as lm-eval and vLLM clients use it, and logprobs that carry each
token's own bytes and true text offsets."""

from __future__ import annotations

import httpx
import pytest
import torch

from conftest import MODEL_NAME

TEXT = "def add(a, b):\n    return a + b"


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The model's own log-probabilities of each prompt token, from transformers directly."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()

    def logprobs(ids: list[int]) -> list[float]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        table = torch.log_softmax(logits, dim=-1)
        return [float(table[i, ids[i + 1]]) for i in range(len(ids) - 1)]

    return logprobs


def _post(server, path: str, body: dict) -> dict:
    response = httpx.post(f"{server.base_url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_tokenize_and_detokenize_in_vllm_shapes(server, tokenizer):
    out = _post(server, "/tokenize", {"model": MODEL_NAME, "prompt": TEXT, "return_token_strs": True})
    assert out["tokens"] == tokenizer.encode(TEXT) and out["count"] == len(out["tokens"])
    assert out["max_model_len"] > 0 and len(out["token_strs"]) == out["count"]
    chat = _post(server, "/tokenize", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]})
    assert chat["count"] > 1
    assert _post(server, "/detokenize", {"model": MODEL_NAME, "tokens": out["tokens"]}) == {"prompt": TEXT}


@pytest.mark.parametrize("as_ids", [False, True], ids=["text", "token-ids"])
def test_echo_scores_every_prompt_token_without_generating(server, tokenizer, reference, as_ids):
    ids = tokenizer.encode(TEXT)
    body = {"model": MODEL_NAME, "prompt": ids if as_ids else TEXT, "max_tokens": 0, "echo": True, "logprobs": 1}
    choice = _post(server, "/v1/completions", body)["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"] == TEXT and choice["finish_reason"] == "length"
    assert len(logprobs["tokens"]) == len(ids)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1:] == pytest.approx(reference(ids), abs=1e-4)
    assert all(token in top for token, top in zip(logprobs["tokens"][1:], logprobs["top_logprobs"][1:]))


def test_lm_eval_loglikelihood_request(server, tokenizer, reference):
    """lm-evaluation-harness's request: token ids of context + continuation, echo, max_tokens 1,
    logprobs 1; it reads token_logprobs[len(context):-1]."""
    context, continuation = tokenizer.encode("def add(a, b):"), tokenizer.encode("\n    return a + b")
    ids = context + continuation
    body = {"model": MODEL_NAME, "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0,
            "seed": 1234}
    logprobs = _post(server, "/v1/completions", body)["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1
    scored = logprobs["token_logprobs"][len(context):-1]
    assert scored == pytest.approx(reference(ids)[len(context) - 1:], abs=1e-4)
    assert sum(scored) < 0


def test_vllm_prompt_logprobs(server, tokenizer, reference):
    ids = tokenizer.encode(TEXT)
    body = {"model": MODEL_NAME, "prompt": TEXT, "max_tokens": 1, "prompt_logprobs": 2}
    choice = _post(server, "/v1/completions", body)["choices"][0]
    entries = choice["prompt_logprobs"]
    assert len(entries) == len(ids) and entries[0] is None
    for position, (entry, expected) in enumerate(zip(entries[1:], reference(ids)), start=1):
        own = entry[str(ids[position])]
        assert own["logprob"] == pytest.approx(expected, abs=1e-4)
        assert own["rank"] >= 1 and isinstance(own["decoded_token"], str)
        assert 2 <= len(entry) <= 3
    chat = _post(server, "/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 1, "prompt_logprobs": 0})
    assert chat["prompt_logprobs"][0] is None and len(chat["prompt_logprobs"]) > 1
    streamed = httpx.post(f"{server.base_url}/v1/completions", json={**body, "stream": True}, timeout=30)
    assert streamed.status_code == 400


def test_token_bytes_are_the_tokens_own(tokenizer):
    from shipyard.engines.detokenizer import TokenTextCache

    cache = TokenTextCache(tokenizer)
    text = "日本語 🚀 héllo"
    ids = tokenizer.encode(text)
    pieces = [cache.get(i) for i in ids]
    assert any("\ufffd" in token for token, _ in pieces)  # some tokens split a character
    assert bytes(b for _, raw in pieces for b in raw) == text.encode("utf-8")


def test_text_offsets_follow_the_text(server, tokenizer):
    text = "x = 'héllo 日本語 🚀'"
    body = {"model": MODEL_NAME, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0}
    logprobs = _post(server, "/v1/completions", body)["choices"][0]["logprobs"]
    offsets = logprobs["text_offset"]
    assert offsets == sorted(offsets) and offsets[0] == 0 and offsets[-1] < len(text)
    # every token that ends a character starts where the text says it does
    for token, offset in zip(logprobs["tokens"], offsets):
        if "\ufffd" not in token:
            assert text[offset:].startswith(token), (token, offset)
