"""The llamacpp engine's C decode loop (decode_loop.c, bursts.py) and its prompt-prefix reuse
(slots.py), on the tiny model's GGUF: the loop draws from the same distribution as the embedded
sampler and scores as it does, answers match the all-Python engine, the loop gives way to new
requests, cancellations and stop strings at once, and prefixes are reused only within a scope."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams

pytest.importorskip("llama_cpp")

_ids = itertools.count()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    from shipyard.optimize.gguf import convert_to_gguf

    return convert_to_gguf(tiny_model, "f16", out_file=tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf")


async def _engine(gguf, **settings):
    from shipyard.engines.llamacpp_engine import LlamaCppEngine, LlamaCppEngineConfig

    engine = LlamaCppEngine(LlamaCppEngineConfig(model=str(gguf), max_num_seqs=4, max_model_len=256, **settings), "t")
    await engine.start()
    return engine


async def _run(engine, prompt: str, scope: str = "tenant-a", **params):
    request = GenerationRequest(request_id=f"r{next(_ids)}", prompt=Prompt(text=prompt),
                                params=SamplingParams(**params), scope=scope)
    ids, text, last = [], "", None
    async for chunk in engine.generate(request):
        ids += chunk.token_ids
        text += chunk.text
        last = chunk
    return ids, text, last


def test_the_loop_draws_from_the_embedded_samplers_distribution(tiny_gguf):
    """One step from the same state, many times: the C draw (bias, temperature) against the
    softmax of the same logits; top-k rows (llama.cpp's chain) never leave the top k."""
    from scipy.stats import chisquare

    from shipyard.engines.llamacpp_engine.decode_loop import DecodeLoop, RowSampler, library
    from shipyard.engines.llamacpp_engine.native import NativeLlama

    lib = library()
    assert lib is not None, "the C decode loop did not build here (see the log)"
    native = NativeLlama(tiny_gguf, n_seq=2, seq_len=64, n_batch=64, n_threads=1)
    vocab = native.n_vocab
    loop = DecodeLoop(lib, native.context, 2, vocab)
    try:
        prompt = np.array([5, 17, 42, 7, 99, 3], dtype=np.int32)
        n = len(prompt)
        native.decode(prompt[:-1], np.arange(n - 1, dtype=np.int32), np.zeros(n - 1, np.int32),
                      np.zeros(n - 1, np.int8))
        logits = native.decode(prompt[-1:], np.array([n - 1], np.int32), np.zeros(1, np.int32), np.ones(1, np.int8))[0]
        favourite = int(np.argmax(logits))
        bias = {favourite: -3.0}
        expected = logits.astype(np.float64).copy()
        expected[favourite] -= 3.0
        expected = np.exp((expected - expected.max()) / 0.7)
        expected /= expected.sum()

        def draws(params: SamplingParams, count: int, scoring: bool = False) -> list[int]:
            sampler, seen = RowSampler(params, vocab, vocab), []
            for _ in range(count):
                native.truncate(0, n - 1)  # the same state every time: the last prompt token undone
                loop.start([(0, n - 1, int(prompt[-1]), sampler)], 1, scoring)
                loop.join()
                seen.append(loop.tokens(0)[0])
            sampler.close()
            return seen

        seen = np.bincount(draws(SamplingParams(temperature=0.7, logit_bias=bias), 3000), minlength=vocab)
        common = expected * 3000 >= 5  # chi-square wants expected counts of 5 or more: the rest pooled
        observed = np.append(seen[common], seen[~common].sum())
        wanted = np.append(expected[common], expected[~common].sum()) * 3000
        assert chisquare(observed, wanted).pvalue > 1e-4
        top3 = set(np.argsort(-logits)[:3].tolist())
        assert set(draws(SamplingParams(temperature=1.5, top_k=3), 300)) <= top3
        assert set(draws(SamplingParams(temperature=0), 5)) == {favourite}

        # the monitors' scores: the chosen token's logprob and the entropy, before bias and temperature
        token = draws(SamplingParams(temperature=0), 1, scoring=True)[0]
        logprobs = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64) - logits.max()).sum()) - logits.max()
        logprob, entropy = loop.scores(0)[0]
        assert logprob == pytest.approx(logprobs[token], abs=1e-3)
        assert entropy == pytest.approx(-(np.exp(logprobs) * logprobs).sum(), abs=1e-3)
    finally:
        loop.close()
        native.close()


async def test_answers_match_the_all_python_engine_and_the_loop_runs(tiny_gguf):
    prompts = ["def parse(text):", "import os", "class Tree:", "x = [", "for i in range(10):"]
    fast, plain = await _engine(tiny_gguf), await _engine(tiny_gguf, decode_loop=False, prefix_reuse=False)
    try:
        answers = {}
        for engine in (fast, plain):  # five requests over four slots: joins, leaves and compaction mid-run
            answers[engine] = await asyncio.gather(*[_run(engine, p, max_tokens=40, temperature=0, ignore_eos=True)
                                                     for p in prompts])
        assert [a[0] for a in answers[fast]] == [a[0] for a in answers[plain]]
        assert all(len(ids) == 40 and last.finish_reason == "length" for ids, _, last in answers[fast])
        assert fast.decode_bursts.bursts > 0 and fast.decode_bursts.steps >= 39  # the fifth, alone at the end
        assert plain.decode_bursts is None
        # the monitors' confidence is there whichever way the tokens were drawn
        for (_, _, a), (_, _, b) in zip(answers[fast], answers[plain]):
            assert a.confidence["tokens"] == b.confidence["tokens"] == 40
            assert a.confidence["mean_logprob"] == pytest.approx(b.confidence["mean_logprob"], abs=1e-3)
        # what the loop cannot draw the same way runs in Python: seeds repeat exactly, penalties apply
        seeded = [await _run(fast, "import os", max_tokens=30, temperature=1.0, seed=11) for _ in range(2)]
        assert seeded[0][0] == seeded[1][0]
        assert fast.stats().num_running == 0
    finally:
        await fast.stop()
        await plain.stop()


@pytest.fixture(scope="module")
def long_gguf(long_context_model, tmp_path_factory):
    from shipyard.optimize.gguf import convert_to_gguf

    return convert_to_gguf(long_context_model, "f16", out_file=tmp_path_factory.mktemp("gguf") / "long-f16.gguf")


async def test_the_loop_gives_way_to_arrivals_stops_and_cancellations(long_gguf):
    from shipyard.engines.llamacpp_engine import LlamaCppEngine, LlamaCppEngineConfig

    engine = LlamaCppEngine(LlamaCppEngineConfig(model=str(long_gguf), max_num_seqs=4, max_model_len=2048), "t")
    await engine.start()
    try:
        long = asyncio.create_task(_run(engine, "class Tree:", max_tokens=1800, temperature=0, ignore_eos=True))
        while engine.decode_bursts is None or not engine.decode_bursts.steps:  # the long one is in a burst
            await asyncio.sleep(0.001)
        short_ids, _, _ = await _run(engine, "import os", max_tokens=5, temperature=0, ignore_eos=True)
        assert len(short_ids) == 5 and not long.done()  # admitted mid-burst, done long before the other
        long_ids, _, long_last = await long
        assert len(long_ids) == 1800 and long_last.finish_reason == "length"
        assert engine.decode_bursts.bursts >= 3  # the long one's, broken by the short one's arrival and end

        # a stop string met inside a burst ends that request only, before the stop
        stopped, other = await asyncio.gather(_run(engine, "x = [", max_tokens=200, temperature=1.5, stop=["e"]),
                                              _run(engine, "import os", max_tokens=60, temperature=0, ignore_eos=True))
        assert stopped[2].finish_reason == "stop" and "e" not in stopped[1] and len(stopped[0]) < 200
        assert len(other[0]) == 60

        # a client that leaves mid-burst: its request ends, its slot is free, the others go on
        request = GenerationRequest(request_id="leaving", prompt=Prompt(text="for i in range(10):"),
                                    params=SamplingParams(max_tokens=1800, temperature=0, ignore_eos=True))
        stream = engine.generate(request)
        await stream.__anext__()
        await stream.aclose()
        for _ in range(200):
            if engine.stats().num_running == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.stats().num_running == 0
        assert len((await _run(engine, "import os", max_tokens=20, temperature=0, ignore_eos=True))[0]) == 20
    finally:
        await engine.stop()


async def test_prompts_reuse_a_prefix_of_their_own_scope_only(tiny_gguf):
    engine, plain = await _engine(tiny_gguf), await _engine(tiny_gguf, prefix_reuse=False, decode_loop=False)
    shared = "def parse(text):\n    tokens = text.split()\n    for token in tokens:\n"
    try:
        first = await _run(engine, shared + "        yield token", max_tokens=8, temperature=0)
        again = await _run(engine, shared + "        print(token)", max_tokens=8, temperature=0)
        other = await _run(engine, shared + "        print(token)", scope="tenant-b", max_tokens=8, temperature=0)
        assert first[2].usage.cached_tokens == 0
        prefix = len(engine.tokenizer.encode(shared)) - 2
        assert again[2].usage.cached_tokens >= prefix  # the earlier prompt's tokens, from its slot
        assert other[2].usage.cached_tokens == 0  # never another tenant's
        reference = await _run(plain, shared + "        print(token)", max_tokens=8, temperature=0)
        assert again[0] == other[0] == reference[0]  # the reused cells give the same answer
        stats = engine.stats()
        assert 0 < stats.prefix_cache_hits < stats.prefix_cache_queries

        # idle slots' cells go once a step admits nothing (they would slow every decode step);
        # a lone request still starts from its own slot's previous prompt
        await asyncio.gather(*[_run(engine, shared + f"        x{i} = token", max_tokens=30, temperature=0,
                                    ignore_eos=True) for i in range(4)])
        assert len(engine._core.runner.cache.holding()) >= 2  # what the finished ones left
        alone = await _run(engine, shared + "        x0 = token", max_tokens=30, temperature=0, ignore_eos=True)
        assert alone[2].usage.cached_tokens >= prefix and engine._core.runner.cache.holding() == [0]
    finally:
        await engine.stop()
        await plain.stop()


def test_without_a_compiler_the_loop_is_reported_unavailable(tmp_path, monkeypatch):
    import llama_cpp

    from shipyard.engines import build_cache as paths
    from shipyard.engines.llamacpp_engine import decode_loop

    sdist = paths.llama_cpp_sdist(llama_cpp.__version__)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    paths.llama_cpp_sdist(llama_cpp.__version__).parent.mkdir(parents=True)
    paths.llama_cpp_sdist(llama_cpp.__version__).symlink_to(sdist)  # the headers are there; the compiler is not
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(decode_loop.DecodeLoopUnavailable, match="compiling"):
        decode_loop._build()


async def test_a_fast_models_tokens_leave_a_few_per_chunk(tiny_gguf):
    """stream_interval_ms: while the loop decodes, output leaves at most that often."""
    engine = await _engine(tiny_gguf, stream_interval_ms=200)
    try:
        request = GenerationRequest(request_id="coalesced", prompt=Prompt(text="import os"),
                                    params=SamplingParams(max_tokens=120, temperature=0, ignore_eos=True))
        chunks = [chunk async for chunk in engine.generate(request)]
        alone = await _run(engine, "import os", max_tokens=120, temperature=0, ignore_eos=True)
    finally:
        await engine.stop()
    assert sum(len(c.token_ids) for c in chunks) == 120 and [t for c in chunks for t in c.token_ids] == alone[0]
    assert len(chunks) <= 4  # the prefill's token, then the rest in one or two (the tiny model takes ~20 ms)
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 120
