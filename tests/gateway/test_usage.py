"""Usage metering: exact records, cost from the price table, shutdown flush, survival of a database outage."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import time

import aiohttp
import asyncpg
import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call, gateway_config

PRICES = {MODEL_NAME: {"prompt": 2.0, "completion": 10.0}}  # USD per million tokens


def _complete(base_url: str, key: str, max_tokens: int = 3) -> dict:
    response = call(base_url, key, "POST", "/v1/completions",
                    json={"model": MODEL_NAME, "prompt": "usage", "max_tokens": max_tokens, "ignore_eos": True})
    assert response.status_code == 200, response.text
    return response.json()["usage"]


def test_usage_records_costs_and_queries(tiny_model, tmp_path):
    server = ServerProcess(gateway_config(tiny_model, prices=PRICES, usage_flush_interval_s=0.1), tmp_path,
                           env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY})
    try:
        server.wait_ready()
        admin = AdminClient(server.base_url)
        tenant = admin.tenant("metered")
        key = admin.key(tenant)
        viewer = admin.key(tenant, "viewer")["key"]
        usages = [_complete(server.base_url, key["key"]) for _ in range(3)]
        time.sleep(0.6)
        data = admin.get("/admin/usage", params={"tenant_id": tenant}).json()["data"]
        assert len(data) == 1
        row = data[0]
        assert row["requests"] == 3 and row["key_id"] == key["id"] and row["model"] == MODEL_NAME
        assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
        assert row["completion_tokens"] == 9
        expected_cost = (row["prompt_tokens"] * 2.0 + 9 * 10.0) / 1e6
        assert row["cost_usd"] == pytest.approx(expected_cost)
        # the viewer sees its tenant's usage, as CSV too
        text = call(server.base_url, viewer, "GET", "/admin/usage", params={"format": "csv"}).text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == 1 and rows[0]["requests"] == "3" and rows[0]["tenant_id"] == tenant
        future = admin.get("/admin/usage", params={"tenant_id": tenant, "start": "2999-01-01T00:00:00Z"}).json()
        assert future["data"] == []
        by_model = admin.get("/admin/usage", params={"tenant_id": tenant, "group_by": "model"}).json()["data"]
        assert by_model == [{"model": MODEL_NAME, "requests": 3, "prompt_tokens": row["prompt_tokens"],
                             "completion_tokens": 9, "cached_tokens": 0, "cache_hits": 0,
                             "cost_usd": pytest.approx(expected_cost)}]
    finally:
        server.stop()


def test_shutdown_flushes_the_buffer(tiny_model, tmp_path):
    # A flush interval longer than the test: only the shutdown flush can write these records.
    server = ServerProcess(gateway_config(tiny_model, usage_flush_interval_s=3600), tmp_path,
                           env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY})
    try:
        server.wait_ready()
        for _ in range(5):
            _complete(server.base_url, ADMIN_KEY, 1)
    finally:
        server.stop()
    database = tmp_path / f"data-{server.port}" / "shipyard.db"
    count = sqlite3.connect(database).execute("SELECT count(*) FROM usage_records").fetchone()[0]
    assert count == 5


def test_no_usage_record_lost_when_the_database_dies(tiny_model, tmp_path, redis_server, postgres_server):
    config = gateway_config(tiny_model, redis_url=redis_server.url, usage_flush_interval_s=0.1)
    config["store"] = {"url": postgres_server.url}
    server = ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY,
                                                  "SHIPYARD_KEY_PEPPER": "outage-pepper-0123456789"})
    dsn = postgres_server.url.replace("postgresql+asyncpg", "postgresql")

    async def count(tenant: str) -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchval("SELECT count(*) FROM usage_records WHERE tenant_id = $1", tenant)
        finally:
            await connection.close()

    async def load(key: str, n: int) -> list[int]:
        body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2, "ignore_eos": True}
        async with aiohttp.ClientSession() as session:
            async def one():
                async with session.post(f"{server.base_url}/v1/completions", json=body,
                                        headers={"authorization": f"Bearer {key}"}) as response:
                    await response.read()
                    return response.status
            return await asyncio.gather(*[one() for _ in range(n)])

    try:
        server.wait_ready()
        admin = AdminClient(server.base_url)
        tenant = admin.tenant("outage")
        key = admin.key(tenant)["key"]
        statuses = asyncio.run(load(key, 40))
        postgres_server.pause()  # the database dies mid-load
        try:
            statuses += asyncio.run(load(key, 60))
            time.sleep(0.5)  # flush attempts fail: records go to the spool
            assert "spooling" in server.log()
        finally:
            postgres_server.resume()
        statuses += asyncio.run(load(key, 40))
        assert statuses == [200] * 140
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and asyncio.run(count(tenant)) < 140:
            time.sleep(0.2)
        assert asyncio.run(count(tenant)) == 140
        assert "replayed" in server.log()
    finally:
        server.stop()


def test_spools_of_dead_processes_are_adopted_and_live_ones_left(tmp_path):
    """Several workers share a data folder, a spool each: a new one takes over the spools (and
    half-done claims) of processes that are gone, never those of one still running."""
    import os
    import subprocess

    from shipyard.gateway.usage import UsageMeter

    gone = subprocess.Popen(["true"])
    gone.wait()
    live = os.getppid()
    files = {f"usage-spool-{gone.pid}.jsonl": "dead\n", "usage-spool.jsonl": "single\n",
             f"usage-spool-{gone.pid}.replaying.adopting-{gone.pid}": "dead-claim\n",
             f"usage-spool-{live}.jsonl": "live\n", f"usage-spool-7.jsonl.adopting-{live}": "claimed-by-live\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    own = tmp_path / f"usage-spool-{os.getpid()}.jsonl"
    UsageMeter(None, own)._adopt_orphans()
    assert sorted(own.read_text().split()) == ["dead", "dead-claim", "single"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [own.name, f"usage-spool-{live}.jsonl", f"usage-spool-7.jsonl.adopting-{live}"])
