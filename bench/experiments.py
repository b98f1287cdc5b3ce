"""The experiments' costs, in process:

    python bench/experiments.py

1. Assignment on the request path: `ExperimentRegistry.assign` for an A/B experiment (two arms,
   sticky by user), per call, p50 and p99 in µs over 200,000 calls with distinct users; and a model
   without an experiment (the lookup every request pays).
2. The statistics engine: an mSPRT comparison fed 100,000 observations (50,000 per arm), asked for
   a decision after every one; decisions per second, one at a time (the canary's way) and over the
   whole history in one vectorized pass (the decision report's way).
3. Shadow's cost to the user (`--shadow`, a real server with the demo model): primary P50/P99
   latency of 4 closed-loop users on a model without an experiment, on one whose every request is
   copied to a challenger 5× slower than the primary (a stand-in upstream) with the default 10% of
   pairs embedded for the cosine, and on one with every pair embedded; nine alternating 10 s turns
   on one server, medians of the turns.

Prints a table; writes bench/results/experiments.json.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

from shipyard.experiments.registry import ExperimentRegistry
from shipyard.experiments.spec import ExperimentSpec
from shipyard.experiments.statistics import SequentialTest, sequential_history

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from gateway_overhead import ADMIN  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def assignment(calls: int = 200_000) -> dict:
    registry = ExperimentRegistry(None, [], lambda: {"chat", "chat-v2"})
    spec = ExperimentSpec(name="rollout", model="chat", mode="ab", unit="user",
                          arms=[{"name": "champion", "deployment": "chat"}, {"name": "b", "deployment": "chat-v2"}])
    registry.specs, registry.versions = {"rollout": spec}, {"rollout": 1}
    registry._reindex()
    users = [f"user-{i}" for i in range(calls)]
    timings, plain = [], []
    clock = time.perf_counter_ns
    for user in users:
        start = clock()
        registry.assign("chat", "tenant", "key", user, None)
        timings.append((clock() - start) / 1000)
        start = clock()
        registry.assign("other", "tenant", "key", user, None)
        plain.append((clock() - start) / 1000)
    return {"calls": calls, "assign_p50_us": round(percentile(timings, 50), 2),
            "assign_p99_us": round(percentile(timings, 99), 2),
            "no_experiment_p50_us": round(percentile(plain, 50), 2)}


def decisions(observations: int = 100_000) -> dict:
    rng = random.Random(3)
    test = SequentialTest("latency", higher_is_better=False, min_samples=100)
    values = [rng.lognormvariate(0, 0.5) for _ in range(observations)]
    start = time.perf_counter()
    for index, value in enumerate(values):
        test.observe(index % 2, value)
        test.result()
    elapsed = time.perf_counter() - start
    # The decision report's way: the whole history at once, a look after every observation.
    arms = [index % 2 for index in range(observations)]
    start = time.perf_counter()
    history = sequential_history(arms, values, higher_is_better=False, metric="latency", min_samples=100)
    vectorized = time.perf_counter() - start
    assert history.decision == test.result().decision
    return {"observations": observations, "decisions_per_s": round(observations / elapsed),
            "history_decisions_per_s": round(observations / vectorized), "history_s": round(vectorized, 4),
            "final_decision": test.result().decision}


def serve_slow_upstream(port: int) -> None:
    """The challenger: a vLLM-shaped server that answers after a delay (POST /delay sets it). vLLM's
    flavor, because the load sends vLLM's `ignore_eos`, which a copy must be able to carry."""
    import asyncio

    from aiohttp import web

    state = {"delay_s": 0.0}

    async def chat(request):
        payload = await request.json()
        await asyncio.sleep(state["delay_s"])
        words = int(payload.get("max_tokens") or 16)
        base = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": " ".join(["slow"] * words)},
                                        "finish_reason": None}]},
                  {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
                  {**base, "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": words,
                                                    "total_tokens": 8 + words}}]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return web.Response(body=body.encode(), content_type="text/event-stream")

    async def set_delay(request):
        state["delay_s"] = float((await request.json())["delay_s"])
        return web.json_response(state)

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/delay", set_delay)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", lambda request: web.Response(text=""))  # vLLM's liveness
    app.router.add_get("/metrics", lambda request: web.Response(text=""))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def closed_loop(url: str, model: str, users: int, duration: float) -> dict:
    """`users` closed-loop chat users for `duration` seconds after a 3 s warm-up: latency p50/p99 (ms)."""
    import asyncio
    import time as clock

    import aiohttp

    headers = {"authorization": f"Bearer {ADMIN}"}
    latencies: list[float] = []
    stop_at = 0.0

    async def user(session, index: int) -> None:
        while clock.monotonic() < stop_at:
            body = {"model": model, "user": f"user-{index}", "max_tokens": 16, "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"What is a list in Python? ({index})"}]}
            start = clock.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                await response.read()
            if response.status == 200:
                latencies.append((clock.perf_counter() - start) * 1000)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        stop_at = clock.monotonic() + 3
        await asyncio.gather(*(user(session, i) for i in range(users)))
        latencies.clear()
        stop_at = clock.monotonic() + duration
        await asyncio.gather(*(user(session, i) for i in range(users)))
    return {"latency_p50_ms": percentile(latencies, 50), "latency_p99_ms": percentile(latencies, 99),
            "requests": len(latencies)}


def shadow_cost(turn_s: float = 10.0) -> dict:
    """Primary latency without a shadow, with a 100%-sampled shadow 5x slower (its pairs embedded at
    the default 10%), and with every pair embedded too: alternating turns on one server."""
    import asyncio
    import multiprocessing
    import tempfile
    import time as clock

    import httpx

    from gateway_overhead import free_port
    from harness import serve_config

    from shipyard.demo.build import default_demo_path

    port = free_port()
    upstream = multiprocessing.Process(target=serve_slow_upstream, args=(port,), daemon=True)
    upstream.start()
    engine = {"engine": "transformers", "model": str(default_demo_path()), "num_threads": 1, "max_num_seqs": 8}
    challenger = {"engine": "openai_http", "url": f"http://127.0.0.1:{port}", "flavor": "vllm", "upstream_model": "m"}
    samples = {"shadowed": 0.1, "shadowed_all_embedded": 1.0}
    config = {"deployments": {"plain": engine, **{name: engine for name in samples}, "challenger": challenger},
              "cache": {"exact": {"enabled": False}}, "server": {"log_level": "warning"},
              "experiments": [{"name": f"bench-{name}".replace("_", "-"), "model": name, "mode": "shadow",
                               "shadow": {"sample": 1.0, "max_concurrent": 64, "compare_sample": sample},
                               "arms": [{"name": "champion", "deployment": name},
                                        {"name": "shadow", "deployment": "challenger"}]}
                              for name, sample in samples.items()]}
    names = ("plain", *samples)
    turns: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = serve_config(config, Path(tmp), "shadow")
        try:
            probe = asyncio.run(closed_loop(url, "plain", 4, 5.0))
            delay = 5 * probe["latency_p50_ms"] / 1000  # the challenger: five times the primary's latency
            httpx.post(f"http://127.0.0.1:{port}/delay", json={"delay_s": delay}, timeout=10)
            # warm the shadow path first: the comparison's embedding helper starts on the first pair
            asyncio.run(closed_loop(url, "shadowed_all_embedded", 2, 2.0))
            clock.sleep(delay + 15)
            auth = {"authorization": f"Bearer {ADMIN}"}

            def embedded() -> float:
                text = httpx.get(f"{url}/metrics", headers=auth, timeout=30).text
                return sum(float(line.split()[-1]) for line in text.splitlines()
                           if line.startswith('shipyard:shadow_comparisons_total{outcome="embedded"}'))

            for name in names * 3:
                turns[name].append(asyncio.run(closed_loop(url, name, 4, turn_s)))
                clock.sleep(delay + 0.5)  # a turn's copies and comparisons end before the next turn
                deadline, last = clock.monotonic() + 60, -1.0
                while clock.monotonic() < deadline and (now := embedded()) != last:
                    last = now
                    clock.sleep(1.5)
            copies = sum(httpx.get(f"{url}/admin/experiments/bench-{name}".replace("_", "-"), headers=auth,
                                   timeout=30).json()["shadow"]["answered"] for name in samples)
            metrics = httpx.get(f"{url}/metrics", headers=auth, timeout=30).text
            comparisons = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
                           if line.startswith("shipyard:shadow_comparisons_total{")}
        finally:
            proc.terminate()
            proc.wait(60)
            upstream.terminate()
    keys = ("latency_p50_ms", "latency_p99_ms")
    medians = {name: {k: round(statistics.median(t[k] for t in turns[name]), 1) for k in keys} for name in names}
    result = {"challenger_delay_s": round(delay, 3), "copies_answered": copies, "comparisons": comparisons,
              **medians, "turns": {name: [{k: round(t[k], 1) for k in keys} for t in runs]
                                   for name, runs in turns.items()}}
    for name in samples:
        for key, label in (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")):
            result[f"{name}_{label}_ratio"] = round(medians[name][key] / medians["plain"][key], 3)
    return result


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--shadow", action="store_true", help="also measure shadow's cost on a real server")
    args = parser.parse_args()
    result = {"assignment": assignment(), "statistics": decisions()}
    if args.shadow:
        result["shadow"] = shadow_cost()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "experiments.json").write_text(json.dumps(result, indent=2) + "\n")
    a, s = result["assignment"], result["statistics"]
    print(f"{'assignment p50 / p99':40}{a['assign_p50_us']:>8} / {a['assign_p99_us']} µs")
    print(f"{'lookup without an experiment p50':40}{a['no_experiment_p50_us']:>8} µs")
    print(f"{'mSPRT decisions per second (100k obs)':40}{s['decisions_per_s']:>8}  one at a time")
    print(f"{'':40}{s['history_decisions_per_s']:>8}  the whole history at once ({s['history_s']} s)")
    if "shadow" in result:
        sh = result["shadow"]
        print(f"{'primary p50 / p99, no shadow':44}{sh['plain']['latency_p50_ms']:>8.1f} / "
              f"{sh['plain']['latency_p99_ms']:.1f} ms")
        for name, label in (("shadowed", "100% shadow 5x slower, 10% embedded"),
                            ("shadowed_all_embedded", "100% shadow 5x slower, all embedded")):
            print(f"{label:44}{sh[name]['latency_p50_ms']:>8.1f} / {sh[name]['latency_p99_ms']:.1f} ms  "
                  f"(x{sh[name + '_p50_ratio']} / x{sh[name + '_p99_ratio']})")
        print(f"{'copies answered; pairs embedded / shed':44}{sh['copies_answered']:>8}; "
              f"{sh['comparisons'].get('embedded', 0):.0f} / {sh['comparisons'].get('shed', 0):.0f}")


if __name__ == "__main__":
    main()
