"""Two gateway processes, one Redis, one PostgreSQL: limits are exact across both."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call, chat_body, gateway_config

PEPPER = "shared-test-pepper-0123456789"
PROMPT_IDS = [5, 6, 7, 8, 9, 10, 11, 12, 13]  # 9 prompt tokens + 1 completion token = 10 per request


@pytest.fixture(scope="module")
def pair(tiny_model, tmp_path_factory, redis_server, postgres_server):
    config = gateway_config(tiny_model, redis_url=redis_server.url,
                            prices={"default": {"prompt": 1.0, "completion": 1.0}})  # USD per million tokens
    config["store"] = {"url": postgres_server.url}
    workdir = tmp_path_factory.mktemp("pair")
    env = {"SHIPYARD_ADMIN_KEY": ADMIN_KEY, "SHIPYARD_KEY_PEPPER": PEPPER}
    servers = [ServerProcess(config, workdir, env=env) for _ in range(2)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def _burst(servers, key: str, total: int = 1000) -> collections.Counter:
    body = {"model": MODEL_NAME, "prompt": PROMPT_IDS, "max_tokens": 1, "ignore_eos": True}
    headers = {"authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one(i: int) -> int:
            url = f"{servers[i % 2].base_url}/v1/completions"
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                return response.status

        return collections.Counter(await asyncio.gather(*[one(i) for i in range(total)]))


@pytest.mark.parametrize("limits", [
    {"rpm": 100},
    {"tpm": 1000},                 # 10 tokens a request
    {"budget_usd": 0.001},         # 10 micro-dollars a request
], ids=["requests-per-minute", "tokens-per-minute", "budget"])
def test_exactly_the_limit_is_admitted_across_two_processes(pair, limits):
    admin = AdminClient(pair[0].base_url)
    key = admin.key(admin.tenant(f"shared-{next(iter(limits))}"), **limits)["key"]
    statuses = asyncio.run(_burst(pair, key))
    assert statuses == {200: 100, 429: 900}, statuses


def test_tenant_limits_bind_all_keys_of_the_tenant(pair):
    admin = AdminClient(pair[1].base_url)
    tenant = admin.tenant("shared-tenant", rpm=20)
    keys = [admin.key(tenant)["key"] for _ in range(2)]

    async def both():
        return await asyncio.gather(_burst(pair, keys[0], 100), _burst(pair, keys[1], 100))

    first, second = asyncio.run(both())
    assert first[200] + second[200] == 20


def test_revoke_on_one_process_applies_on_the_other(pair):
    admin = AdminClient(pair[0].base_url)
    created = admin.key(admin.tenant("shared-revoke"))
    for server in pair:  # both processes have the key cached
        assert call(server.base_url, created["key"], "POST", "/v1/chat/completions", json=chat_body(1)).status_code == 200
    assert admin.post(f"/admin/keys/{created['id']}/revoke").status_code == 200
    assert call(pair[1].base_url, created["key"], "POST", "/v1/chat/completions", json=chat_body(1)).status_code == 401


@pytest.mark.parametrize("mode, expected", [("open", 200), ("closed", 503)])
def test_redis_unreachable(tiny_model, tmp_path, mode, expected):
    from services import free_port

    config = gateway_config(tiny_model, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_failure=mode)
    server = ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY})
    try:
        server.wait_ready()
        admin = AdminClient(server.base_url)
        key = admin.key(admin.tenant("no-redis"), rpm=5)["key"]  # a limited key: the limiter must ask Redis
        response = call(server.base_url, key, "POST", "/v1/chat/completions", json=chat_body(1))
        assert response.status_code == expected, response.text
        if mode == "closed":
            assert response.json()["error"]["code"] == "rate_limiter_unavailable"
            assert response.headers["retry-after"]
        else:
            assert "fail open" in server.log()
    finally:
        server.stop()
