"""The embedded engine against transformers' own `generate()`, and its batching invariants."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from shipyard.demo.build import build_random_model
from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams
from shipyard.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

PROMPTS = ["def foo(x):", "The quick brown fox jumps over", "Hello", "import os\nimport sys\n\nclass"]


async def _run(engine, request_id: str, prompt: str, **params) -> tuple[list[int], str, list]:
    stream = engine.generate(GenerationRequest(request_id, Prompt(text=prompt), SamplingParams(**params)))
    ids, text, chunks = [], "", []
    async for chunk in stream:
        ids += chunk.token_ids
        text += chunk.text
        chunks.append(chunk)
    return ids, text, chunks


@pytest.fixture(scope="module")
async def engine(tiny_model):
    eng = TransformersEngine(TransformersEngineConfig(model=str(tiny_model), max_num_seqs=8), "tiny")
    await eng.start()
    yield eng
    await eng.stop()


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "qwen2", "mistral", "phi"])
async def test_greedy_matches_transformers_generate(architecture, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    path = tiny_model if architecture == "llama" else build_random_model(tmp_path / architecture, architecture,
                                                                         tiny_model)
    eng = TransformersEngine(TransformersEngineConfig(model=str(path), max_num_seqs=8, dtype="float32"), architecture)
    await eng.start()
    try:
        # Different lengths finish at different steps: slots are freed and compacted mid-flight.
        lengths = [20, 7, 13, 3]
        results = await asyncio.gather(*[
            _run(eng, f"r{i}", p, max_tokens=n, temperature=0, ignore_eos=True)
            for i, (p, n) in enumerate(zip(PROMPTS, lengths))])
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        # ignore_eos: EOS may be chosen and generation goes on. generate() does the same with no
        # EOS to stop at (min_new_tokens would instead mask EOS, a different distribution).
        config = copy.deepcopy(model.generation_config)
        config.eos_token_id = None
        config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        for prompt, n, (ids, text, _) in zip(PROMPTS, lengths, results):
            inputs = eng.tokenizer(prompt, return_tensors="pt")
            out = model.generate(**inputs, generation_config=config, max_new_tokens=n, do_sample=False)
            expected = out[0, inputs.input_ids.shape[1]:].tolist()
            assert ids == expected, (architecture, prompt)
            assert text == eng.tokenizer.decode(expected, skip_special_tokens=True)
    finally:
        await eng.stop()


async def test_n_choices_share_the_prompt(engine):
    single, _, _ = await _run(engine, "one", "Hello", max_tokens=10, temperature=0, ignore_eos=True)
    stream = engine.generate(GenerationRequest("many", Prompt(text="Hello"),
                                               SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, n=3)))
    per_choice: dict[int, list[int]] = {0: [], 1: [], 2: []}
    usage = None
    async for chunk in stream:
        per_choice[chunk.index] += chunk.token_ids
        usage = chunk.usage or usage
    assert all(ids == single for ids in per_choice.values())
    assert usage.completion_tokens == 30 and usage.prompt_tokens == len(engine.tokenizer.encode("Hello"))


async def test_seeded_sampling_ignores_batch_neighbours(engine):
    params = dict(max_tokens=16, temperature=0.9, top_k=50, top_p=0.9, seed=5, ignore_eos=True)
    alone, _, _ = await _run(engine, "alone", "def foo(x):", **params)
    crowd = await asyncio.gather(
        _run(engine, "seeded", "def foo(x):", **params),
        *[_run(engine, f"noise{i}", p, max_tokens=16, temperature=1.0) for i, p in enumerate(PROMPTS)])
    assert crowd[0][0] == alone


async def test_cancel_frees_the_slot(engine):
    stream = engine.generate(GenerationRequest("long", Prompt(text="x"),
                                               SamplingParams(max_tokens=400, ignore_eos=True)))
    await stream.__anext__()
    assert engine.stats().num_running == 1
    await stream.aclose()
    for _ in range(200):
        if engine.stats().num_running == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().num_running == 0 and engine.stats().kv_cache_usage == 0


async def test_logprobs_are_model_log_probabilities(engine):
    _, _, chunks = await _run(engine, "lp", "Hello", max_tokens=4, temperature=0, logprobs=True, top_logprobs=5,
                              ignore_eos=True)
    entries = [e for c in chunks for e in (c.logprobs or [])]
    assert len(entries) == 4
    for entry in entries:
        assert entry.token_id == entry.top[0].token_id  # greedy picks the most likely token
        total = torch.tensor([t.logprob for t in entry.top]).exp().sum()
        assert 0 < total <= 1.0001


async def test_logit_bias_forces_a_token(engine):
    target = engine.tokenizer.encode("import")[0]
    ids, _, _ = await _run(engine, "bias", "Hello", max_tokens=5, temperature=1.0, logit_bias={target: 100.0},
                           ignore_eos=True)
    assert ids == [target] * 5


async def test_stop_token_ids(engine):
    ids, _, chunks = await _run(engine, "st", "Hello", max_tokens=20, temperature=0, ignore_eos=True)
    stop_at = ids[3]
    cut, _, cut_chunks = await _run(engine, "st2", "Hello", max_tokens=20, temperature=0, ignore_eos=True,
                                    stop_token_ids=[stop_at])
    assert cut == ids[: ids.index(stop_at) + 1]
    assert cut_chunks[-1].finish_reason == "stop" and cut_chunks[-1].stop_reason == stop_at
