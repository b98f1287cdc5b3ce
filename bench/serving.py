"""Serving throughput and TTFT: Shipyard vs `transformers serve --continuous-batching` vs
`model.generate()` (a burst of C requests as one padded batch, measured at every C), on the demo
model, same machine, same run, same KV-cache size.

    python bench/serving.py [--model PATH] [--concurrency 1 8 32] [--max-tokens 64] [--threads 1]

Load comes from aiohttp streaming clients (one connection per in-flight request). Every request
asks for exactly `--max-tokens` tokens (`ignore_eos`; for transformers serve, whose server has no
such flag, the tokens actually streamed are counted). Prints a table; writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCH_KEY = "sy-bench-admin-key-0123456789"  # Shipyard runs with authentication on, as in production


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def make_prompts(count: int) -> list[str]:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    return [" ".join(texts[i % len(texts)].split()[:40]) for i in range(count)]


async def one_request(session, url: str, model: str, prompt: str, max_tokens: int,
                      extra: dict) -> tuple[float, int, float]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **extra}
    start = time.perf_counter()
    ttft, tokens, usage_tokens = None, 0, None
    async with session.post(url, json=body, headers={"authorization": f"Bearer {BENCH_KEY}"}) as response:
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {await response.text()}")
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage_tokens = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
    return ttft if ttft is not None else float("nan"), usage_tokens or tokens, time.perf_counter() - start


async def load(url: str, model: str, concurrency: int, requests: int, max_tokens: int, extra: dict) -> dict:
    prompts = make_prompts(requests)
    queue: asyncio.Queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    ttfts, latencies, total_tokens = [], [], 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker():
            nonlocal total_tokens
            while not queue.empty():
                prompt = queue.get_nowait()
                ttft, tokens, latency = await one_request(session, url, model, prompt, max_tokens, extra)
                ttfts.append(ttft)
                latencies.append(latency)
                total_tokens += tokens

        await one_request(session, url, model, "warm up", 4, extra)  # first-call costs are not the steady state
        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - start
    return {"tokens_per_s": total_tokens / wall, "ttft_p50_ms": percentile(ttfts, 50) * 1000,
            "ttft_p99_ms": percentile(ttfts, 99) * 1000, "requests": requests, "tokens": total_tokens,
            "wall_s": wall}


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(url)


def start_shipyard(model: str, port: int, threads: int, slots: int, max_len: int, log,
                   dtype: str = "auto") -> subprocess.Popen:
    config = RESULTS / "bench-shipyard.yaml"
    config.write_text(json.dumps({"deployments": {"demo": {
        "engine": "transformers", "model": model, "num_threads": threads, "max_num_seqs": slots,
        "max_model_len": max_len, "max_waiting": 4096, "dtype": dtype}}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHIPYARD_ADMIN_KEY": BENCH_KEY,
           "SHIPYARD_DATA_DIR": str(RESULTS / "bench-data")}
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "--config", str(config), "--port", str(port),
                             "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_http(f"http://127.0.0.1:{port}/ready", proc)
    return proc


def start_transformers_serve(model: str, port: int, threads: int, cache_tokens: int, log) -> subprocess.Popen:
    block = 256
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(exe), "serve", model, "--continuous-batching", "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu", "--cb-block-size", str(block),
                             "--cb-num-blocks", str(cache_tokens // block), "--cb-max-batch-tokens", "2048",
                             "--attn-implementation", "sdpa"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def batched_generate(model_path: str, threads: int, concurrency_levels: list[int], requests_for,
                     max_tokens: int) -> dict:
    """Plain `model.generate()`, measured at each concurrency: a burst of C requests is one padded
    batch (what a hand-written server over generate() does), bursts one after another. Every
    request of a batch gets its first token when the batch's first step ends; at C=1 this is one
    request at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

    class FirstStep(StoppingCriteria):
        """Notes when the first new token exists (the batch's time to first token); never stops."""

        def __init__(self):
            self.at = None

        def __call__(self, input_ids, scores, **kwargs):
            if self.at is None:
                self.at = time.perf_counter()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    results = {}
    for c in concurrency_levels:
        prompts = make_prompts(requests_for(c))
        ttfts, tokens, started = [], 0, time.perf_counter()
        for first in range(0, len(prompts), c):
            batch = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=False) for p in prompts[first:first + c]]
            inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            step = FirstStep()
            arrived = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                     stopping_criteria=StoppingCriteriaList([step]), pad_token_id=tokenizer.pad_token_id)
            ttfts += [(step.at - arrived)] * len(batch)
            tokens += (out.shape[1] - inputs["input_ids"].shape[1]) * len(batch)
        elapsed = time.perf_counter() - started
        results[c] = {"tokens_per_s": tokens / elapsed, "ttft_p50_ms": percentile(ttfts, 50) * 1000,
                      "ttft_p99_ms": percentile(ttfts, 99) * 1000, "requests": len(prompts), "tokens": tokens,
                      "measured": True}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the demo model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every contestant")
    parser.add_argument("--requests-per-worker", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["shipyard", "transformers", "generate"])
    args = parser.parse_args()

    model = args.model
    if model is None:
        from shipyard.demo.build import default_demo_path

        model = str(default_demo_path())
    RESULTS.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(model).pad_token_id
    slots, max_len = 32, 1024
    cache_tokens = slots * max_len  # same KV-cache size for both servers
    results: dict = {"model": model, "max_tokens": args.max_tokens, "threads": args.threads,
                     "kv_cache_tokens": cache_tokens, "cpu_count": os.cpu_count(), "systems": {}}
    log = open(RESULTS / "bench-servers.log", "w")

    def requests_for(c: int) -> int:
        return max(8, c * args.requests_per_worker)

    for system in ("shipyard", "shipyard-bf16", "transformers"):
        if system.split("-")[0] in args.skip:
            continue
        port = free_port()
        if system.startswith("shipyard"):
            dtype = "bfloat16" if system.endswith("bf16") else "auto"
            proc = start_shipyard(model, port, args.threads, slots, max_len, log, dtype)
            name, extra = "demo", {"ignore_eos": True}
        else:
            proc = start_transformers_serve(model, port, args.threads, cache_tokens, log)
            # transformers serve has no ignore_eos; an EOS id the model never emits (padding) does the same.
            name, extra = model, {"generation_config": json.dumps(
                {"eos_token_id": pad_id, "do_sample": False, "max_new_tokens": args.max_tokens})}
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            results["systems"][system] = {
                c: asyncio.run(load(url, name, c, requests_for(c), args.max_tokens, extra)) for c in args.concurrency}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if "generate" not in args.skip:
        results["systems"]["generate"] = batched_generate(model, args.threads, args.concurrency, requests_for,
                                                          args.max_tokens)

    print(f"\nmodel={model} max_tokens={args.max_tokens} threads={args.threads} kv_cache_tokens={cache_tokens}")
    print(f"{'system':<15}{'conc':>6}{'tok/s':>10}{'TTFT p50 ms':>14}{'TTFT p99 ms':>14}")
    for system, by_c in results["systems"].items():
        for c, r in by_c.items():
            print(f"{system:<15}{c:>6}{r['tokens_per_s']:>10.1f}{r['ttft_p50_ms']:>14.1f}{r['ttft_p99_ms']:>14.1f}")
    systems = results["systems"]
    ratios = {}
    for c in args.concurrency:
        for mine in ("shipyard", "shipyard-bf16"):
            if mine not in systems:
                continue
            base = systems[mine][c]["tokens_per_s"]
            for other in ("transformers", "generate"):
                if other in systems:
                    ratios[f"{mine}/{other}@{c}"] = base / systems[other][c]["tokens_per_s"]
    results["ratios"] = ratios
    for key, value in ratios.items():
        print(f"{key:<32}{value:>8.2f}x")
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS / 'serving.json'}")


if __name__ == "__main__":
    main()
