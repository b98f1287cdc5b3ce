"""Tiered admission and the in-process limiter, on their own; then shedding over HTTP."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, gateway_config
from shipyard.gateway.admission import TieredAdmission
from shipyard.gateway.errors import Overloaded, RateLimited
from shipyard.gateway.limits import BUDGET, CONCURRENCY, RATE, Bucket, InProcessLimiter


async def test_lower_tiers_are_shed_first():
    gate = TieredAdmission(max_inflight=1, max_queue=2, queue_timeout_s=5)
    await gate.enter(tier=0)  # holds the only slot
    low = asyncio.ensure_future(gate.enter(tier=0))
    mid = asyncio.ensure_future(gate.enter(tier=5))
    await asyncio.sleep(0)
    high = asyncio.ensure_future(gate.enter(tier=9))  # queue full: displaces the lowest waiter
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await low
    with pytest.raises(Overloaded):
        await gate.enter(tier=0)  # outranks nobody: shed at once
    gate.leave()
    await high  # the highest tier goes first
    assert not mid.done()
    gate.leave()
    await mid
    gate.leave()
    assert gate.inflight == 0 and gate.waiting == 0


async def test_queue_timeout():
    gate = TieredAdmission(max_inflight=1, max_queue=4, queue_timeout_s=0.05, retry_after_s=3)
    await gate.enter(tier=0)
    with pytest.raises(Overloaded) as excinfo:
        await gate.enter(tier=0)
    assert excinfo.value.headers["Retry-After"] == "3"
    gate.leave()
    assert gate.inflight == 0


def _bucket(kind, limit, cost=1, key="k", metric="requests", window_ms=60_000):
    return Bucket(key, kind, limit, cost, window_ms, "things", metric, "key")


async def test_sliding_window_never_exceeds_the_limit():
    limiter = InProcessLimiter()
    for _ in range(3):
        await limiter.acquire([_bucket(RATE, 3)])
    with pytest.raises(RateLimited) as excinfo:
        await limiter.acquire([_bucket(RATE, 3)])
    assert 1 <= int(excinfo.value.headers["Retry-After"]) <= 60


async def test_all_or_nothing_and_settle():
    limiter = InProcessLimiter()
    tokens = _bucket(RATE, 100, cost=60, key="t", metric="tokens")
    requests = _bucket(RATE, 1, key="r")
    first = await limiter.acquire([requests, tokens])
    with pytest.raises(RateLimited):  # requests bucket is full: the tokens bucket must not be charged
        await limiter.acquire([_bucket(RATE, 1, key="r"), _bucket(RATE, 100, cost=30, key="t", metric="tokens")])
    await limiter.settle(first, {"tokens": 10})  # used 10 of the 60 reserved
    await limiter.acquire([_bucket(RATE, 100, cost=90, key="t", metric="tokens")])
    with pytest.raises(RateLimited):
        await limiter.acquire([_bucket(RATE, 100, cost=1, key="t", metric="tokens")])


async def test_concurrency_and_budget():
    limiter = InProcessLimiter()
    held = [await limiter.acquire([_bucket(CONCURRENCY, 2, key="c")]) for _ in range(2)]
    with pytest.raises(RateLimited):
        await limiter.acquire([_bucket(CONCURRENCY, 2, key="c")])
    await limiter.settle(held[0], {})
    await limiter.acquire([_bucket(CONCURRENCY, 2, key="c")])
    spend = _bucket(BUDGET, 100, cost=60, key="b", metric="budget")
    reservation = await limiter.acquire([spend])
    with pytest.raises(RateLimited):
        await limiter.acquire([_bucket(BUDGET, 100, cost=60, key="b", metric="budget")])
    await limiter.settle(reservation, {"budget": 20})
    await limiter.acquire([_bucket(BUDGET, 100, cost=60, key="b", metric="budget")])


def test_saturated_deployment_sheds_low_tiers_over_http(tiny_model, tmp_path):
    server = ServerProcess(gateway_config(tiny_model, max_inflight=1, max_queue=1, queue_timeout_s=20), tmp_path,
                           env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY})

    async def scenario(keys):
        long = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 480, "n": 8, "ignore_eos": True}
        short = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2, "ignore_eos": True}
        url = f"{server.base_url}/v1/completions"
        async with aiohttp.ClientSession() as session:
            async def post(key, body):
                async with session.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as response:
                    return response.status, dict(response.headers), await response.json()

            holder = asyncio.ensure_future(post(keys["low"], long))
            await asyncio.sleep(0.1)
            low = asyncio.ensure_future(post(keys["low"], short))
            await asyncio.sleep(0.1)
            high = asyncio.ensure_future(post(keys["high"], short))
            return await asyncio.gather(holder, low, high)

    try:
        server.wait_ready()
        admin = AdminClient(server.base_url)
        tenant = admin.tenant("tiers")
        keys = {"low": admin.key(tenant, tier=0)["key"], "high": admin.key(tenant, tier=9)["key"]}
        holder, low, high = asyncio.run(scenario(keys))
        assert holder[0] == 200 and high[0] == 200
        assert low[0] == 503 and low[1]["Retry-After"] and low[2]["error"]["code"] == "server_overloaded"
    finally:
        server.stop()


async def test_redis_limiter_settles_in_batches_and_checks_fences(redis_server):
    import redis.asyncio as aioredis

    from shipyard.gateway.errors import StaleCredentials
    from shipyard.gateway.redis_limits import RedisLimiter

    client = aioredis.from_url(redis_server.url)
    limiter = RedisLimiter(client, prefix=f"test:{time.time_ns()}:")
    try:
        tokens = lambda cost: _bucket(RATE, 100, cost=cost, key="t", metric="tokens")  # noqa: E731
        first = await limiter.acquire([tokens(60), _bucket(CONCURRENCY, 1, key="c")])
        with pytest.raises(RateLimited):
            await limiter.acquire([_bucket(CONCURRENCY, 1, key="c")])
        await limiter.settle(first, {"tokens": 10})
        await limiter.flush()
        await limiter.acquire([tokens(90), _bucket(CONCURRENCY, 1, key="c")])  # refund and release applied
        with pytest.raises(RateLimited):
            await limiter.acquire([tokens(1)])
        await client.set("test:gen", 3)
        await limiter.acquire([], fence=("test:gen", 3))
        with pytest.raises(StaleCredentials):
            await limiter.acquire([tokens(0)], fence=("test:gen", 2))
    finally:
        await limiter.close()
        await client.aclose()
