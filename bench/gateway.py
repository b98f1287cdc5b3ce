"""What the gateway stages cost per request: auth + limits + usage + metrics, in microseconds.

    python bench/gateway.py [--requests 5000] [--redis-url redis://127.0.0.1:6379/0]

Runs the real stages in-process against a cache-warm key with key and tenant limits set (so
every bucket is evaluated), as an inference route runs them: authenticate (with Redis, the key's
freshness is checked as a fence inside the limits script) → authorize → admit (limits + tiered admission) →
finish (settle, usage record into the batch writer) → metrics. Once with the in-process limiter,
once with Redis on loopback (a redis-server is started for the run when none is given).
Prints p50/p99 per stage and in total; writes bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run(requests: int, redis_url: str | None, workdir: Path) -> dict:
    import redis.asyncio as aioredis

    from shipyard.gateway.admission import TieredAdmission
    from shipyard.gateway.auth import Authenticator
    from shipyard.gateway.keystore import KeySpec, KeyStore
    from shipyard.gateway.limits import InProcessLimiter
    from shipyard.gateway.redis_limits import RedisLimiter
    from shipyard.gateway.roles import Permission, allows
    from shipyard.gateway.service import Gateway
    from shipyard.gateway.usage import UsageMeter
    from shipyard.monitor.metrics import ServingMetrics
    from shipyard.store.db import Database

    db = Database(f"sqlite+aiosqlite:///{workdir / 'bench.db'}")
    await db.migrate()
    store = KeyStore(db, b"bench-pepper")
    redis = aioredis.from_url(redis_url) if redis_url else None
    authenticator = Authenticator(store, redis)
    limiter = RedisLimiter(redis) if redis else InProcessLimiter()
    meter = UsageMeter(db, workdir / "spool.jsonl", flush_interval_s=0.5)
    await meter.start()
    gateway = Gateway(authenticator, limiter, meter, {"m": TieredAdmission(128, 512, 30)}, {},
                      {"default": {"prompt": 1.0, "completion": 2.0}})
    metrics = ServingMetrics(lambda: {})
    tenant = await store.create_tenant(f"bench-{time.time_ns()}", rpm=10**9, tpm=10**12)
    _, token = await store.create_key(KeySpec(tenant_id=tenant.id, rpm=10**9, tpm=10**12, max_concurrent=10**6,
                                              budget_usd=10**9, budget_period="month"))
    await gateway.authenticate(token)  # cache-warm

    stages: dict[str, list[float]] = {"auth": [], "limits+admission": [], "settle+usage": [], "metrics": [],
                                      "total": []}
    for i in range(requests + 200):
        t0 = time.perf_counter_ns()
        principal = await gateway.authenticate(token, defer_freshness=True)  # as inference routes do
        if not allows(principal.role, Permission.INFERENCE):
            raise SystemExit("bench key cannot infer")
        t1 = time.perf_counter_ns()
        ticket = await gateway.admit(principal, "m", 20, 16, 1)
        ticket.headers()
        t2 = time.perf_counter_ns()
        await gateway.finish(ticket, f"bench-{i}-{t0}", 200, 20, 16, 0, 5.0, 1.0)
        t3 = time.perf_counter_ns()
        metrics.ttft.labels("m").observe(0.001)
        metrics.e2e.labels("m").observe(0.005)
        metrics.prompt_tokens.labels("m").inc(20)
        metrics.generation_tokens.labels("m").inc(16)
        metrics.success.labels("m", "stop").inc()
        t4 = time.perf_counter_ns()
        if i >= 200:  # warm-up excluded
            for name, value in (("auth", t1 - t0), ("limits+admission", t2 - t1), ("settle+usage", t3 - t2),
                                ("metrics", t4 - t3), ("total", t4 - t0)):
                stages[name].append(value / 1000)
    await limiter.close()
    await meter.stop()
    if redis is not None:
        await redis.aclose()
    await db.close()
    return {name: {"p50_us": pct(v, 50), "p99_us": pct(v, 99)} for name, v in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    redis_proc = None
    redis_url = args.redis_url
    if redis_url is None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                                      stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        redis_url = f"redis://127.0.0.1:{port}/0"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = {"in-process": asyncio.run(run(args.requests, None, Path(tmp))),
                       "redis": asyncio.run(run(args.requests, redis_url, Path(tmp)))}
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
    print(f"\ngateway stages per request, {args.requests} requests, cache-warm key (microseconds)")
    print(f"{'stage':<20}{'in-process p50':>16}{'p99':>10}{'redis p50':>12}{'p99':>10}")
    for stage in results["in-process"]:
        a, b = results["in-process"][stage], results["redis"][stage]
        print(f"{stage:<20}{a['p50_us']:>16.1f}{a['p99_us']:>10.1f}{b['p50_us']:>12.1f}{b['p99_us']:>10.1f}")
    (RESULTS / "gateway.json").write_text(json.dumps({"requests": args.requests, **results}, indent=2))
    print(f"\nwrote {RESULTS / 'gateway.json'}")


if __name__ == "__main__":
    main()
