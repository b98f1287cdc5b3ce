"""Structured outputs and embeddings on the demo model, one run:

    python bench/structured.py [--requests 16] [--rounds 3]

1. Decode throughput with a JSON schema vs without, through `shipyard serve` (streamed chat, the
   exact cache off), at concurrency 1 and 8. The constrained requests go first in a round; the
   free ones then ask for exactly as many tokens each (`ignore_eos`), so both generate the same
   tokens and the ratio is the grammar's cost per token. Rounds alternate which side runs first;
   medians over rounds.
2. Embeddings per second through /v1/embeddings (8 clients, 16 texts a call, base64 as the
   official client asks) vs sentence-transformers' own `encode` in process, both on one torch
   thread, alternating, medians.

Prints a table; writes bench/results/structured.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from harness import HEADERS, serve_config  # noqa: E402

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["title", "tags", "score"],
          "properties": {"title": {"type": "string", "maxLength": 60},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 24},
                                  "minItems": 3, "maxItems": 6},
                         "score": {"type": "integer", "minimum": 0, "maximum": 100}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "summary", "schema": SCHEMA, "strict": True}}


async def _chat(session, url: str, body: dict) -> int:
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    if "response_format" in body:
        json.loads(answer["choices"][0]["message"]["content"])  # it parses, or the benchmark is void
    return answer["usage"]["completion_tokens"]


async def _round(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[int]]:
    """(tokens/s, each request's tokens) for the bodies, `concurrency` at a time."""
    import aiohttp

    tokens = [0] * len(bodies)
    queue = list(range(len(bodies)))

    async def user(session) -> None:
        while queue:
            i = queue.pop(0)
            tokens[i] = await _chat(session, url, bodies[i])

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return sum(tokens) / elapsed, tokens


def _question(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Summarise Python's list type as JSON, take {i}."}]


def schema_vs_free(url: str, requests: int, rounds: int, concurrency: int) -> dict:
    constrained = [{"model": "demo", "messages": _question(i), "max_tokens": 200, "temperature": 0.8, "seed": i,
                    "response_format": FORMAT} for i in range(requests)]
    asyncio.run(_round(url, constrained[:2], 2))  # warm-up: the grammar compiled, the model touched
    with_schema, without = [], []
    for r in range(rounds):
        rate, tokens = asyncio.run(_round(url, constrained, concurrency))
        free = [{"model": "demo", "messages": _question(i), "max_tokens": n, "temperature": 0.8, "seed": i,
                 "ignore_eos": True} for i, n in enumerate(tokens)]
        if r % 2:  # the free side first in odd rounds (the machine drifts)
            without.append(asyncio.run(_round(url, free, concurrency))[0])
            with_schema.append(asyncio.run(_round(url, constrained, concurrency))[0])
        else:
            with_schema.append(rate)
            without.append(asyncio.run(_round(url, free, concurrency))[0])
    return {"schema_tokens_per_s": statistics.median(with_schema), "free_tokens_per_s": statistics.median(without),
            "ratio": statistics.median(w / f for w, f in zip(with_schema, without)),
            "rounds_schema": with_schema, "rounds_free": without}


def _texts(count: int) -> list[str]:
    import pydoc

    words = " ".join(pydoc.getdoc(t) for t in (str, dict, list, set, int, bytes)).split()
    return [" ".join(words[(i * 7) % (len(words) - 24):][: 8 + i % 17]) for i in range(count)]


async def _embed_api(url: str, texts: list[str], batch: int, concurrency: int) -> float:
    import aiohttp

    batches = [texts[i: i + batch] for i in range(0, len(texts), batch)]

    async def user(session) -> None:
        while batches:
            chunk = batches.pop()
            async with session.post(f"{url}/v1/embeddings", headers=HEADERS, json={
                    "model": "shipyard-embed", "input": chunk, "encoding_format": "base64"}) as response:
                assert response.status == 200, await response.text()
                assert len((await response.json())["data"]) == len(chunk)

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - started)


def embeddings_vs_direct(url: str, rounds: int, count: int = 1024) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from shipyard.engines.embedding_engine import builtin_model_path

    torch.set_num_threads(1)  # as the server's embedding model
    model = SentenceTransformer(builtin_model_path(), device="cpu", local_files_only=True)
    texts = _texts(count)
    asyncio.run(_embed_api(url, texts[:64], 16, 4))
    model.encode(texts[:64], normalize_embeddings=True)
    api, direct = [], []
    for r in range(rounds):
        def run_direct():
            started = time.perf_counter()
            model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            direct.append(len(texts) / (time.perf_counter() - started))
        if r % 2:
            run_direct()
            api.append(asyncio.run(_embed_api(url, texts, 16, 8)))
        else:
            api.append(asyncio.run(_embed_api(url, texts, 16, 8)))
            run_direct()
    return {"api_per_s": statistics.median(api), "direct_per_s": statistics.median(direct),
            "ratio": statistics.median(a / d for a, d in zip(api, direct)), "texts": count,
            "rounds_api": api, "rounds_direct": direct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from shipyard.demo.build import default_demo_path

    model = default_demo_path()
    if not (model / "config.json").exists():
        raise SystemExit(f"the demo model is not built ({model}); run `make demo-model`")
    config = {"deployments": {"demo": {"engine": "transformers", "model": str(model), "num_threads": 1,
                                       "max_num_seqs": 16}},
              "embeddings": {"shipyard-embed": {"model": "builtin", "num_threads": 1}},
              "cache": {"exact": {"enabled": False}}, "server": {"log_level": "warning"}}
    results: dict = {"model": model.name, "requests": args.requests, "rounds": args.rounds, "schema": SCHEMA}
    with tempfile.TemporaryDirectory(prefix="shipyard-structured-") as tmp:
        proc, url = serve_config(config, Path(tmp), "structured")
        try:
            for concurrency in (1, 8):
                results[f"c{concurrency}"] = schema_vs_free(url, args.requests, args.rounds, concurrency)
            results["embeddings"] = embeddings_vs_direct(url, args.rounds)
        finally:
            proc.terminate()
            proc.wait(60)
    results["schema_ratio_c1"] = results["c1"]["ratio"]
    results["schema_ratio_c8"] = results["c8"]["ratio"]
    results["embeddings_ratio"] = results["embeddings"]["ratio"]
    print(f"{'':28}{'with schema':>14}{'without':>12}{'ratio':>8}")
    for c in (1, 8):
        r = results[f"c{c}"]
        print(f"{f'decode tok/s, c={c}':28}{r['schema_tokens_per_s']:>14.0f}{r['free_tokens_per_s']:>12.0f}"
              f"{r['ratio']:>8.2f}")
    e = results["embeddings"]
    print(f"{'':28}{'API':>14}{'direct':>12}{'ratio':>8}")
    print(f"{'embeddings/s (MiniLM)':28}{e['api_per_s']:>14.0f}{e['direct_per_s']:>12.0f}{e['ratio']:>8.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "structured.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
