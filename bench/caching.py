"""Caching on the demo model, one run:

    python bench/caching.py [--requests 24] [--concurrency 4]

1. KV prefix sharing: chat requests sharing a 512-token system prompt, each with its own
   question, streamed through `shipyard serve` at the given concurrency, with prefix sharing on
   and then off (the exact cache off in both, so every request reaches the engine): TTFT p50/p99
   and decode throughput.
2. The exact cache: latency of a hit vs a miss (non-streamed, 32 tokens), medians over distinct
   prompts, through the same API.
3. The semantic cache: embedding + FAISS lookup p50 with 10,000 cached prompts (in process), on
   the embedder's default thread count (one per core, up to 4) and on one.

Prints a table; writes bench/results/caching.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from harness import HEADERS, serve_config, stream_chat  # noqa: E402


def _serve(model: Path, workdir: Path, name: str, prefix_mib: float, exact: bool) -> tuple[subprocess.Popen, str]:
    config = {"deployments": {"demo": {"engine": "transformers", "model": str(model), "num_threads": 1,
                                       "max_num_seqs": 16, "prefix_cache_mib": prefix_mib}},
              "cache": {"exact": {"enabled": exact}}, "server": {"log_level": "warning"}}
    return serve_config(config, workdir, name)


def system_prompt(tokenizer, tokens: int = 512) -> str:
    """Python documentation prose cut to `tokens` tokens of the demo tokenizer."""
    import pydoc

    text = pydoc.getdoc(str) + "\n" + pydoc.getdoc(dict) + "\n" + pydoc.getdoc(list) + "\n" + pydoc.getdoc(set)
    ids = tokenizer.encode(text * 4)[:tokens]
    return tokenizer.decode(ids)


async def shared_prefix_load(url: str, system: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    import aiohttp

    def body(i: int) -> dict:
        return {"model": "demo", "max_tokens": max_tokens, "temperature": 0.8, "ignore_eos": True,
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": f"Question {i}: what does method number {i} do?"}]}

    queue = list(range(requests))
    ttfts: list[float] = []
    tokens = 0

    async def user(session) -> None:
        nonlocal tokens
        while queue:
            ttft, n = await stream_chat(session, url, body(queue.pop()))
            ttfts.append(ttft)
            tokens += n

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await stream_chat(session, url, body(-1))  # warm-up (and, with sharing on, the prefix enters the pool)
        started = time.perf_counter()
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ttfts.sort()
    return {"ttft_ms_p50": statistics.median(ttfts), "ttft_ms_p99": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
            "tokens_per_s": tokens / elapsed, "requests": requests}


async def exact_hit_vs_miss(url: str, prompts: int, max_tokens: int) -> dict:
    import aiohttp

    miss, hit = [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for i in range(prompts + 1):
            body = {"model": "demo", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"What is a generator? ({i})"}]}
            for bucket in (miss, hit):
                start = time.perf_counter()
                async with session.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS) as response:
                    await response.read()
                    status = response.headers.get("x-shipyard-cache")
                elapsed = (time.perf_counter() - start) * 1000
                if i:  # the first pair is a warm-up
                    bucket.append(elapsed)
                await asyncio.sleep(0.01)  # the miss's answer is stored just after its response
            assert status == "hit", status
    return {"miss_ms_p50": statistics.median(miss), "hit_ms_p50": statistics.median(hit), "prompts": prompts}


def semantic_lookup(entries: int, queries: int) -> dict:
    import numpy as np

    from shipyard.cache.semantic import Embedder, SemanticCache, SemanticCacheConfig

    subjects = ["a list", "a dict", "a set", "a tuple", "a string", "a file", "a socket", "a thread", "a process",
                "a class", "a decorator", "a generator", "an iterator", "a context manager", "a module", "a package",
                "a lambda", "a coroutine", "a queue", "a heap"]
    verbs = ["create", "copy", "sort", "reverse", "serialize", "compare", "hash", "test", "print", "close",
             "open", "filter", "merge", "split", "measure", "debug", "document", "type-check", "profile", "cache"]
    langs = ["Python", "Rust", "Go", "Java", "C", "C++", "JavaScript", "TypeScript", "Ruby", "Kotlin", "Swift",
             "Scala", "Haskell", "Elixir", "Lua", "Perl", "PHP", "R", "Julia", "Zig", "Dart", "OCaml", "F#",
             "Clojure", "Erlang"]
    prompts = [f"How do I {v} {s} in {lang}?" for lang in langs for s in subjects for v in verbs][:entries]
    embedder = Embedder()
    vectors = embedder(prompts)
    cache = SemanticCache(SemanticCacheConfig(deployments=["demo"], max_entries=entries + 1), embedder)
    for index, vector in enumerate(vectors):  # each answer names its prompt: a hit is judged right or wrong
        cache.add("bench", "t", "demo", vector, str(index).encode())
    rng = np.random.default_rng(0)
    picks = rng.choice(len(prompts), queries, replace=False)
    by_threads = {}
    for threads in sorted({embedder.num_threads, 1}, reverse=True):  # the default first, then one
        embedder.num_threads = threads
        timings, right, wrong = [], 0, 0
        for i in picks:
            question = prompts[i].replace("How do I", "How can I")
            start = time.perf_counter()
            vector = embedder([question])[0]
            match = cache.lookup("bench", vector)
            timings.append((time.perf_counter() - start) * 1000)
            if match is not None:  # the paraphrased prompt's own answer, or another prompt's (a wrong answer)
                right += match.answer == str(i).encode()
                wrong += match.answer != str(i).encode()
        by_threads[threads] = (statistics.median(timings), sorted(timings)[int(len(timings) * 0.99) - 1], right,
                               wrong)
    default = max(by_threads)
    return {"entries": cache.size(), "threads": default, "lookup_p50_ms": by_threads[default][0],
            "lookup_p99_ms": by_threads[default][1], "paraphrase_hit_rate": by_threads[default][2] / queries,
            "wrong_answer_rate": by_threads[default][3] / queries, "lookup_p50_ms_1_thread": by_threads[1][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from shipyard.demo.build import default_demo_path

    model = default_demo_path()
    if not (model / "config.json").exists():
        raise SystemExit(f"the demo model is not built ({model}); run `make demo-model`")
    system = system_prompt(AutoTokenizer.from_pretrained(model))
    results: dict = {"model": model.name, "system_prompt_tokens": 512, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory(prefix="shipyard-caching-") as tmp:
        workdir = Path(tmp)
        for name, mib in (("prefix_on", 256), ("prefix_off", 0)):
            proc, url = _serve(model, workdir, name, mib, exact=False)
            try:
                results[name] = asyncio.run(shared_prefix_load(url, system, args.requests, args.concurrency,
                                                               args.max_tokens))
            finally:
                proc.terminate()
                proc.wait(60)
        proc, url = _serve(model, workdir, "exact", 256, exact=True)
        try:
            results["exact"] = asyncio.run(exact_hit_vs_miss(url, 20, args.max_tokens))
        finally:
            proc.terminate()
            proc.wait(60)
    results["semantic"] = semantic_lookup(args.entries, 200)
    on, off, exact = results["prefix_on"], results["prefix_off"], results["exact"]
    results["prefix_ttft_speedup"] = off["ttft_ms_p50"] / on["ttft_ms_p50"]
    results["prefix_throughput_ratio"] = on["tokens_per_s"] / off["tokens_per_s"]
    results["exact_hit_speedup"] = exact["miss_ms_p50"] / exact["hit_ms_p50"]
    results["semantic_lookup_p50_ms"] = results["semantic"]["lookup_p50_ms"]
    print(f"\n{'512-token shared system prompt':<34}{'TTFT p50 ms':>12}{'TTFT p99 ms':>12}{'tok/s':>9}")
    for name in ("prefix_on", "prefix_off"):
        r = results[name]
        print(f"{name:<34}{r['ttft_ms_p50']:>12.1f}{r['ttft_ms_p99']:>12.1f}{r['tokens_per_s']:>9.1f}")
    print(f"prefix sharing: TTFT {results['prefix_ttft_speedup']:.2f}x lower, throughput "
          f"{results['prefix_throughput_ratio']:.2f}x")
    print(f"exact cache: miss {exact['miss_ms_p50']:.1f} ms, hit {exact['hit_ms_p50']:.2f} ms "
          f"({results['exact_hit_speedup']:.1f}x)")
    s = results["semantic"]
    print(f"semantic cache: {s['entries']} prompts, lookup p50 {s['lookup_p50_ms']:.1f} ms with {s['threads']} "
          f"threads (p99 {s['lookup_p99_ms']:.1f}; 1 thread: p50 {s['lookup_p50_ms_1_thread']:.1f}), "
          f"paraphrase hit rate (its own answer) {s['paraphrase_hit_rate']:.2f}, "
          f"another prompt's answer {s['wrong_answer_rate']:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "caching.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'caching.json'}")


if __name__ == "__main__":
    main()
