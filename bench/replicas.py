"""The demo model's throughput: one in-process engine vs two worker replicas, in one run.

    python bench/replicas.py [--duration 30] [--concurrency 16] [--max-tokens 64]

Both set-ups are a `shipyard serve` gateway on this machine, one after the other, with 1 torch
thread per engine: (a) the embedded engine in the gateway's process; (b) a routed deployment of
two `shipyard worker` processes the gateway launches (least-outstanding balancing). Closed-loop
chat completions at `--concurrency` with `ignore_eos`, so every request generates exactly
`--max-tokens` tokens. Prints a table; writes bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from harness import serve_deployment  # noqa: E402
from gateway_overhead import ADMIN, pct  # noqa: E402


async def _load(url: str, concurrency: int, duration: float, max_tokens: int) -> dict:
    import aiohttp

    headers = {"authorization": f"Bearer {ADMIN}"}
    latencies: list[float] = []
    tokens = errors = 0
    stop_at = 0.0

    async def user(session, index: int) -> None:
        nonlocal tokens, errors
        while time.monotonic() < stop_at:
            body = {"model": "demo", "messages": [{"role": "user", "content": f"What is a list in Python? ({index})"}],
                    "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.7}
            start = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                answer = await response.json()
            if response.status != 200:
                errors += 1
                continue
            tokens += answer["usage"]["completion_tokens"]
            latencies.append((time.perf_counter() - start) * 1000)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        stop_at = time.monotonic() + 5  # warm-up
        await asyncio.gather(*(user(session, i) for i in range(concurrency)))
        latencies.clear()
        tokens = 0
        stop_at = time.monotonic() + duration
        started = time.monotonic()
        await asyncio.gather(*(user(session, i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"tokens_per_s": tokens / elapsed, "rps": len(latencies) / elapsed, "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99), "requests": len(latencies), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    from shipyard.demo.build import default_demo_path

    model = default_demo_path()
    if not (model / "config.json").exists():
        raise SystemExit(f"the demo model is not built ({model}); run `make demo-model`")
    setups = {
        "in_process_1": {"engine": "transformers", "model": str(model), "num_threads": 1, "max_num_seqs": 32},
        "worker_replicas_2": {"balancer": "least_outstanding", "replicas": [
            {"engine": "launch", "kind": "worker", "model": str(model), "num_threads": 1, "name": f"w{i}"}
            for i in range(2)]},
    }
    results: dict = {"concurrency": args.concurrency, "max_tokens": args.max_tokens, "duration_s": args.duration,
                     "model": model.name, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="shipyard-replicas-") as tmp:
        for name, deployment in setups.items():
            proc, url = serve_deployment(deployment, Path(tmp), name)
            try:
                results[name] = asyncio.run(_load(url, args.concurrency, args.duration, args.max_tokens))
            finally:
                proc.terminate()
                proc.wait(60)
    one, two = results["in_process_1"], results["worker_replicas_2"]
    results["ratio_tokens_per_s"] = two["tokens_per_s"] / one["tokens_per_s"]
    print(f"\n{'':<20}{'tokens/s':>10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}   (concurrency {args.concurrency}, "
          f"{args.max_tokens} tokens each, {os.cpu_count()} cores)")
    for name in setups:
        f = results[name]
        print(f"{name:<20}{f['tokens_per_s']:>10.1f}{f['rps']:>8.2f}{f['p50_ms']:>9.0f}{f['p99_ms']:>9.0f}")
    print(f"2 worker replicas / 1 in-process engine: {results['ratio_tokens_per_s']:.2f}x tokens/s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replicas.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'replicas.json'}")


if __name__ == "__main__":
    main()
