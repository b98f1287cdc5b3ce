"""Items 6 and 7: concurrency slots in Redis are leases that a frozen Redis cannot leak, and a
client running exactly at its limit is never refused."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest
import redis.asyncio as aioredis

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call, gateway_config
from shipyard.gateway.limits import CONCURRENCY, Bucket
from shipyard.gateway.redis_limits import RedisLimiter


def _slot(key: str, limit: int = 1) -> list[Bucket]:
    return [Bucket(key, CONCURRENCY, limit, 1, 0, "concurrent requests for this API key", "concurrent", "key")]


@pytest.fixture()
async def client(redis_server):
    connection = aioredis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    yield connection
    await connection.aclose()


class _Frozen:
    """SIGSTOP the Redis server: it neither answers nor closes connections (a freeze, not a crash)."""

    def __init__(self, redis_server):
        self.pid = redis_server.proc.pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


async def test_a_release_lost_in_a_freeze_is_retried(client, redis_server):
    limiter = RedisLimiter(client, fail_open=False, lease_s=30, release_wait_s=0.2)
    key = f"freeze-{uuid.uuid4().hex}"
    reservation = await limiter.acquire(_slot(key))
    with _Frozen(redis_server):
        await limiter.settle(reservation, {})  # cannot reach Redis: queued, not dropped
        await asyncio.sleep(1.0)
    deadline = time.monotonic() + 10
    while True:  # the retry lands well before the 30 s lease would have expired
        try:
            await limiter.settle(await limiter.acquire(_slot(key)), {})
            break
        except Exception:
            assert time.monotonic() < deadline, "the slot never came back"
            await asyncio.sleep(0.2)
    await limiter.close()


async def test_a_slot_whose_holder_vanished_expires(client):
    holder = RedisLimiter(client, lease_s=1)
    key = f"vanish-{uuid.uuid4().hex}"
    await holder.acquire(_slot(key))
    holder._renewer.cancel()  # the holding process dies: nobody renews, nobody releases
    other = RedisLimiter(client, lease_s=1)
    with pytest.raises(Exception) as refused:
        await other.acquire(_slot(key))
    assert refused.value.status == 429
    await asyncio.sleep(1.2)
    await other.settle(await other.acquire(_slot(key)), {})
    await other.close()


async def test_a_live_lease_is_renewed(client):
    limiter = RedisLimiter(client, lease_s=0.6)
    key = f"renew-{uuid.uuid4().hex}"
    reservation = await limiter.acquire(_slot(key))
    await asyncio.sleep(1.5)  # more than twice the lease: only renewal keeps it
    with pytest.raises(Exception):
        await limiter.acquire(_slot(key))
    await limiter.settle(reservation, {})
    await limiter.settle(await limiter.acquire(_slot(key)), {})
    await limiter.close()


async def test_running_exactly_at_the_limit_is_never_refused(client):
    limiter = RedisLimiter(client)
    key = f"exact-{uuid.uuid4().hex}"
    for _ in range(300):  # acquire right after the previous settle returns, as a client would
        await limiter.settle(await limiter.acquire(_slot(key, limit=2)), {})
    await limiter.close()


def test_exactly_at_max_concurrent_over_http(tiny_model, tmp_path, redis_server):
    config = gateway_config(tiny_model, redis_url=redis_server.url)
    with ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
        admin = AdminClient(server.base_url)
        key = admin.key(admin.tenant("exactly-one"), max_concurrent=1)["key"]
        body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}
        statuses = [call(server.base_url, key, "POST", "/v1/completions", json=body).status_code
                    for _ in range(60)]
        streamed = [call(server.base_url, key, "POST", "/v1/completions", json={**body, "stream": True}).status_code
                    for _ in range(30)]
    assert set(statuses) == {200} and set(streamed) == {200}
