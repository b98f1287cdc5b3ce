"""The in-process `llamacpp` engine: the GGUF conversion of the tiny model passes the very same
`openai`-client tests (and structured-output tests) as the embedded PyTorch engine (imported below and run against this
server), plus what is particular to llama.cpp: several sequences in one decode, and a tokenizer
read from the GGUF file itself."""

from __future__ import annotations

import asyncio

import pytest

from conftest import MODEL_NAME, ServerProcess
from test_openai_client import *  # noqa: F401,F403 - every test there, run against this server
from test_structured_outputs import *  # noqa: F401,F403 - structured outputs: the same grammar, llama.cpp's logits

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    from shipyard.optimize.gguf import convert_to_gguf

    return convert_to_gguf(tiny_model, "f16", out_file=tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf")


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    """Replaces the session's PyTorch server for the imported tests: the tokenizer comes from the
    GGUF file (no folder given), so those tests also check it matches the original."""
    deployment = {"engine": "llamacpp", "model": str(tiny_gguf), "max_num_seqs": 32, "max_model_len": 512}
    config = {"auth": "disabled", "deployments": {MODEL_NAME: deployment}}
    with ServerProcess(config, tmp_path_factory.mktemp("llamacpp-engine")) as proc:
        yield proc


def _run(engine, prompt: str, **params):
    from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams

    async def go():
        request = GenerationRequest(request_id=f"r{next(_ids)}", prompt=Prompt(text=prompt),
                                    params=SamplingParams(**params))
        ids, finish = [], None
        async for chunk in engine.generate(request):
            ids += chunk.token_ids
            finish = chunk.finish_reason or finish
        return ids, finish

    return go()


_ids = iter(range(10**9))


async def test_sequences_decoded_together_match_each_alone(tiny_gguf):
    from shipyard.engines.llamacpp_engine import LlamaCppEngine, LlamaCppEngineConfig

    engine = LlamaCppEngine(LlamaCppEngineConfig(model=str(tiny_gguf), max_num_seqs=4, max_model_len=256), "t")
    await engine.start()
    try:
        prompts = ["def parse(text):", "import os", "class Tree:", "x = [", "for i in range(10):", "# A"]
        alone = [await _run(engine, p, max_tokens=12, temperature=0, ignore_eos=True) for p in prompts]
        # six requests over four sequences: slots are reused and compacted while others decode
        together = await asyncio.gather(*[_run(engine, p, max_tokens=12, temperature=0, ignore_eos=True)
                                          for p in prompts])
        assert together == alone
        assert all(len(ids) == 12 and finish == "length" for ids, finish in together)
        assert engine.stats().num_running == 0
    finally:
        await engine.stop()


def test_the_gguf_tokenizer_matches_the_original(tiny_gguf, tokenizer):
    from shipyard.engines.llamacpp_engine.engine import load_tokenizer

    from_gguf = load_tokenizer(tiny_gguf, None)
    text = "def f(x):\n    return {'ü': x ** 2}  # 😀"
    assert from_gguf.encode(text) == tokenizer.encode(text)
    assert from_gguf.decode(tokenizer.encode(text)) == text


async def test_bad_files_and_bounds_are_clear_errors(tmp_path, tiny_gguf, tiny_model):
    from pydantic import ValidationError

    from shipyard.engines.llamacpp_engine import LlamaCppEngine, LlamaCppEngineConfig
    from shipyard.engines.llamacpp_engine.native import LlamaCppError

    with pytest.raises(ValidationError):
        LlamaCppEngineConfig(model=str(tiny_gguf), max_num_seqs=257)  # llama.cpp's own sequence bound
    missing = LlamaCppEngine(LlamaCppEngineConfig(model=str(tmp_path / "nope.gguf")), "t")
    with pytest.raises(FileNotFoundError):
        await missing.start()
    assert not await missing.health()
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 64)
    broken = LlamaCppEngine(LlamaCppEngineConfig(model=str(garbage), tokenizer=str(tiny_model)), "t")
    with pytest.raises(LlamaCppError, match="could not load"):
        await broken.start()
    assert not broken.ready()
