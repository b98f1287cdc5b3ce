"""KV prefix sharing: reused blocks give token-for-token the output of a full prefill, for every
architecture the embedded engine serves; the counters show the reuse; a pool too small for the
traffic evicts and keeps answering correctly."""

from __future__ import annotations

import asyncio

import pytest

from shipyard.demo.build import build_random_model
from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams
from shipyard.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

PREAMBLE = ("You are a careful assistant for Python programmers. Answer in one short paragraph, "
            "quote the standard library where it helps, and never invent modules. ")
QUESTIONS = ["What is a list?", "How do I open a file?", "def parse(text):", "Explain dict.get", "x = [1, 2"]


async def _greedy(engine, request_id: str, prompt: str, max_tokens: int = 12):
    stream = engine.generate(GenerationRequest(request_id, Prompt(text=prompt),
                                               SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)))
    ids, usage = [], None
    async for chunk in stream:
        ids += chunk.token_ids
        usage = chunk.usage or usage
    return ids, usage


async def _serve_all(engine, prompts: list[str]) -> list:
    first = [await _greedy(engine, "warm", prompts[0])]  # fills the pool
    rest = await asyncio.gather(*[_greedy(engine, f"r{i}", p) for i, p in enumerate(prompts[1:])])
    again = [await _greedy(engine, "again", prompts[0])]  # its whole prefix is known now
    return first + list(rest) + again


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "qwen2", "mistral", "phi"])
async def test_reused_prefixes_give_the_same_tokens(architecture, tiny_model, tmp_path):
    path = tiny_model if architecture == "llama" else build_random_model(tmp_path / architecture, architecture,
                                                                         tiny_model)
    prompts = [PREAMBLE + q for q in QUESTIONS]
    outputs = {}
    for sharing in (0, 4):
        engine = TransformersEngine(TransformersEngineConfig(model=str(path), max_num_seqs=4, dtype="float32",
                                                             prefix_cache_mib=sharing, prefix_block_size=4),
                                    architecture)
        await engine.start()
        try:
            outputs[sharing] = await _serve_all(engine, prompts)
            stats = engine.stats()
        finally:
            await engine.stop()
    assert [ids for ids, _ in outputs[4]] == [ids for ids, _ in outputs[0]]
    assert all(usage.cached_tokens == 0 for _, usage in outputs[0])
    preamble_tokens = len(engine.tokenizer.encode(PREAMBLE))
    cached = [usage.cached_tokens for _, usage in outputs[4]]
    assert cached[0] == 0 and all(c >= preamble_tokens - 4 for c in cached[1:]), cached
    assert stats.prefix_cache_hits == sum(cached) and stats.prefix_cache_queries >= stats.prefix_cache_hits


async def test_a_small_pool_evicts_and_stays_correct(tiny_model):
    prompts = [f"{i} " * 3 + PREAMBLE + QUESTIONS[i % len(QUESTIONS)] for i in range(12)]  # distinct first blocks
    config = dict(model=str(tiny_model), max_num_seqs=4, dtype="float32", prefix_block_size=4)
    plain = TransformersEngine(TransformersEngineConfig(**config, prefix_cache_mib=0), "plain")
    await plain.start()
    try:
        expected = [await _greedy(plain, f"p{i}", p) for i, p in enumerate(prompts)]
    finally:
        await plain.stop()
    small = TransformersEngine(TransformersEngineConfig(**config, prefix_cache_mib=0.02), "small")
    await small.start()
    try:
        got = [await _greedy(small, f"s{i}", p) for i, p in enumerate(prompts)]
        got += [await _greedy(small, "last", prompts[-1])]  # the most recent prefix is still there
        pool = small._core.prefix_cache
        assert pool.evictions > 0 and pool.blocks_used <= pool.max_blocks
    finally:
        await small.stop()
    assert [ids for ids, _ in got[:-1]] == [ids for ids, _ in expected]
    assert got[-1][0] == expected[-1][0] and got[-1][1].cached_tokens > 0
