"""Each CPU path yields a model that generates and whose perplexity on held-out text stays within
the bound of the unquantized model; the GPU-only paths say clearly why they cannot run here."""

from __future__ import annotations

import openai
import pytest
import torch

from conftest import ServerProcess
from shipyard.engines.transformers_engine.quantize import QuantizationError, quantize_model
from shipyard.optimize.verify import compare, held_out_text, perplexity_gguf, perplexity_hf

BOUND_PCT = 2.0


@pytest.fixture(scope="module")
def text():
    return held_out_text(4_000)


@pytest.fixture(scope="module")
def reference(tiny_model, text):
    return perplexity_hf(tiny_model, text)


def test_held_out_text_is_not_in_the_demo_corpus(text):
    from shipyard.demo.corpus import build_corpus

    corpus = "\n".join(build_corpus())
    assert len(text) == 4_000 and text[:200] not in corpus


def test_dynamic_int8_keeps_the_perplexity(tiny_model, text, reference):
    verdict = compare(reference, perplexity_hf(tiny_model, text, "int8"), BOUND_PCT)
    assert verdict.kept, verdict
    assert verdict.candidate.tokens == reference.tokens


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "q4_k_m"])
def test_gguf_conversions_keep_the_perplexity(tiny_model, text, reference, outtype, tmp_path):
    from shipyard.optimize.gguf import convert_to_gguf

    path = convert_to_gguf(tiny_model, outtype, out_file=tmp_path / f"tiny-{outtype}.gguf")
    candidate = perplexity_gguf(path, text)
    assert candidate.tokens == reference.tokens  # llama.cpp tokenizes exactly as the HF tokenizer
    bound = {"f16": 0.5, "q8_0": BOUND_PCT, "q4_k_m": 10.0}[outtype]  # 4 bits on a 64-wide random model
    assert compare(reference, candidate, bound).kept, (reference, candidate)


def test_fp8_needs_a_gpu_with_fp8_tensor_cores():
    with pytest.raises(QuantizationError, match="compute capability 8.9"):
        quantize_model(torch.nn.Linear(4, 4), "fp8", torch.device("cpu"))


def test_an_int8_deployment_serves_through_the_gateway(tiny_model, tmp_path):
    config = {"auth": "disabled", "deployments": {"tiny": {"engine": "transformers", "model": str(tiny_model),
                                                           "num_threads": 1, "quantization": "int8"}}}
    with ServerProcess(config, tmp_path) as server:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0) as client:
            reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=5, extra_body={"ignore_eos": True})
            assert reply.usage.completion_tokens == 5 and reply.choices[0].message.content
        assert "quantized" in server.log() and "to int8" in server.log()
