"""More from the outside attack run, each held shut: replica specs over the API run only the known
servers with a vetted environment and reach only http(s); the semantic cache's embedder has its
own bounded thread; limits never live where the cache may evict them, and the cache's Redis
footprint is bounded; the semantic cache is bounded in bytes; an invalidation during a Redis stall
is a 503 and is not lost; racing rotations have one winner whose secret works; an unknown key id
costs the store no more reads than a known one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json

import numpy as np
import pytest
import redis as redis_sync

from conftest import MODEL_NAME, ServerProcess, deployment, until
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient, call, gateway_config
from services import RedisServer


@pytest.fixture(scope="module")
def upstream():
    fake = FakeVLLM("replicas", model="m").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def site(tiny_model, tmp_path_factory, upstream):
    config = {"deployments": {MODEL_NAME: deployment(tiny_model),
                              "routed": {"replicas": [{"engine": "openai_http", "url": upstream.url, "flavor": "vllm",
                                                       "upstream_model": "m"}]}},
              "server": {"api_launch": True}}
    with ServerProcess(config, tmp_path_factory.mktemp("replicas"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


# ---------------------------------------------------------------- 1. replica specs over the API
@pytest.mark.parametrize("spec", [
    {"engine": "launch", "kind": "worker", "model": "/tmp", "executable": "/bin/bash"},
    {"engine": "launch", "kind": "llamacpp", "model": "/tmp/x.gguf", "env": {"BASH_ENV": "$(id > {owned})"}},
    {"engine": "launch", "kind": "worker", "model": "/tmp", "env": {"LD_PRELOAD": "/tmp/evil.so"}},
    {"engine": "launch", "kind": "worker", "model": "/tmp", "env": {"PYTHONSTARTUP": "/tmp/evil.py"}},
    {"engine": "launch", "kind": "unknown-server", "model": "/tmp"},
    {"engine": "openai_http", "url": "file:///etc/passwd"},
    {"engine": "openai_http", "url": "gopher://127.0.0.1:1/"},
    {"engine": "openai_http", "url": "http:///no-host"},
    {"engine": "openai_http", "url": "http://127.0.0.1:1", "api_key_env": "SHIPYARD_ADMIN_KEY"},
    {"engine": "openai_http", "url": "http://127.0.0.1:1", "weight": float("inf")},
    {"engine": "openai_http", "url": "http://127.0.0.1:1", "weight": 1e300},
], ids=lambda spec: str(spec)[:60])
def test_replica_specs_over_the_api_are_vetted(site, spec, tmp_path):
    owned = tmp_path / "owned"
    if "env" in spec:
        spec = {**spec, "env": {k: v.replace("{owned}", str(owned)) for k, v in spec["env"].items()}}
    admin = AdminClient(site.base_url)
    raw = json.dumps(spec).replace("Infinity", "1e999")  # JSON has no Infinity; 1e999 overflows to it
    response = admin.http.post("/admin/deployments/routed/replicas", content=raw,
                               headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert not owned.exists()
    listing = admin.get("/admin/deployments")
    assert listing.status_code == 200 and len(listing.json()["data"][1]["replicas"]) == 1


def test_a_replica_that_cannot_load_is_a_400_naming_why(site):
    admin = AdminClient(site.base_url)
    response = admin.post("/admin/deployments/routed/replicas", json={"engine": "transformers", "model": "/etc"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "replica_start_failed"
    assert "backing store" not in response.text and "(refused)" in site.log()  # audited all the same
    added = admin.post("/admin/deployments/routed/replicas",
                       json={"engine": "openai_http", "url": "http://127.0.0.1:9", "name": "spare",
                             "api_key_env": "SHIPYARD_UPSTREAM_SPARE"})
    assert added.status_code == 201, added.text
    assert "replica spare of routed added by key" in site.log() and "(running)" in site.log()  # the audit line
    assert admin.http.delete("/admin/deployments/routed/replicas/spare").status_code == 200


# ---------------------------------------------------------------- 2. the embedder's own thread
def test_embeddings_never_hold_the_default_thread_pool():
    """The real MiniLM embedder: eight long texts queued on its own thread, a ninth refused at once,
    and tokenization's pool (one thread here) free all along. On a loop of its own: the shared test
    loop keeps its default pool."""
    from shipyard.embeddings import Embedder

    asyncio.run(_embeddings_beside_tokenization(Embedder(None, 1, max_waiting=8)))


async def _embeddings_beside_tokenization(embedder) -> None:
    from shipyard.embeddings import EmbedderBusy

    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))  # tokenization's pool, one thread
    finished: list[str] = []
    text = " ".join(f"word{i}" for i in range(200))

    async def embed(i: int):
        vectors = await embedder.embed([f"{text} {i}"])
        assert vectors.shape == (1, 384)
        finished.append(f"embed {i}")

    async def tokenize():
        await asyncio.to_thread(lambda: None)
        finished.append("tokenize")

    embeds = [asyncio.create_task(embed(i)) for i in range(8)]
    await asyncio.sleep(0)
    with pytest.raises(EmbedderBusy):  # a ninth waits nowhere: refused at once (a cache miss)
        await embedder.embed(["one too many"])
    await tokenize()
    await asyncio.gather(*embeds)
    assert finished.index("tokenize") < finished.index("embed 7")  # not queued behind the embeddings
    assert embedder.refused == 1


@pytest.fixture()
def redis_of_its_own():
    server = RedisServer().start()
    yield server
    server.stop()


# ---------------------------------------------------------------- 3. limits and an evicting Redis
def test_limits_refuse_a_redis_that_evicts(tiny_model, tmp_path):
    evicting = RedisServer("--maxmemory", "32mb", "--maxmemory-policy", "allkeys-lru").start()
    try:
        server = ServerProcess(gateway_config(tiny_model, redis_url=evicting.url), tmp_path,
                               env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY})
        with pytest.raises(RuntimeError, match="exited"):
            server.wait_ready(60)
        server.stop()
        assert "evicts keys" in server.log() and "allkeys-lru" in server.log()
    finally:
        evicting.stop()


def test_the_cache_may_evict_on_its_own_redis_and_is_bounded_there(tiny_model, tmp_path, redis_of_its_own):
    redis_server = redis_of_its_own  # the limits' (keeps its keys), used by no other test
    cache_redis = RedisServer("--maxmemory", "32mb", "--maxmemory-policy", "allkeys-lru").start()
    config = gateway_config(tiny_model, redis_url=redis_server.url, usage_flush_interval_s=0.1)
    config["cache"] = {"redis_url": cache_redis.url, "exact": {"max_bytes": 3_000}}
    try:
        with ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
            admin = AdminClient(server.base_url)
            filler = admin.key(admin.tenant("filler"))["key"]
            limited = admin.key(admin.tenant("limited"), rpm=3)["key"]
            for i in range(40):
                body = {"model": MODEL_NAME, "prompt": f"answer number {i}", "max_tokens": 24, "temperature": 0,
                        "ignore_eos": True}
                assert call(server.base_url, filler, "POST", "/v1/completions", json=body).status_code == 200
            stored = redis_sync.Redis.from_url(cache_redis.url)
            assert 0 < int(stored.get("shipyard:cache:meta:bytes")) <= 3_000
            kept = stored.zrange("shipyard:cache:meta:index", 0, -1)
            assert 0 < len(kept) < 40 and sum(stored.strlen(k) for k in kept) <= 3_000
            body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}
            statuses = [call(server.base_url, limited, "POST", "/v1/completions", json=body).status_code
                        for _ in range(5)]
            assert statuses == [200, 200, 200, 429, 429]
            assert redis_sync.Redis.from_url(redis_server.url).keys("shipyard:cache:*") == []  # none beside limits
    finally:
        cache_redis.stop()


# ---------------------------------------------------------------- 4. the semantic cache in bytes
def test_the_semantic_cache_is_bounded_in_bytes():
    from shipyard.cache.semantic import SemanticCache, SemanticCacheConfig

    cache = SemanticCache(SemanticCacheConfig(deployments=["d"], max_bytes=2_000_000, max_entry_bytes=800_000),
                          embedder=lambda texts: None)
    rng = np.random.default_rng(0)
    for i in range(40):
        vector = rng.normal(size=384).astype(np.float32)
        cache.add(f"p{i % 4}", f"t{i % 4}", "d", vector / np.linalg.norm(vector), bytes(780_000))
    assert cache.bytes <= 2_000_000 and cache.size() == 2
    cache.add("p0", "t0", "d", np.ones(384, dtype=np.float32) / np.sqrt(384), bytes(900_000))  # too big to keep
    assert cache.size() == 2
    cache.invalidate("t1")
    assert cache.bytes == sum(len(a) + 384 * 4 for p in cache._partitions.values() for _, a in p.entries.values())


# ---------------------------------------------------------------- 5. invalidation and a frozen Redis
def test_an_invalidation_during_a_redis_stall_is_a_503_and_is_not_lost(tiny_model, tmp_path, redis_of_its_own):
    config = gateway_config(tiny_model, redis_url=redis_of_its_own.url)
    body = {"model": MODEL_NAME, "prompt": "def cached(", "max_tokens": 4, "temperature": 0}
    with ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
        def cache_status() -> str:
            response = call(server.base_url, ADMIN_KEY, "POST", "/v1/completions", json=body)
            assert response.status_code == 200
            return response.headers["x-shipyard-cache"]

        cache_status()
        assert cache_status() == "hit"
        redis_of_its_own.pause()
        try:
            frozen = call(server.base_url, ADMIN_KEY, "DELETE", "/admin/cache", params={"deployment": MODEL_NAME})
            assert frozen.status_code == 503 and frozen.headers["retry-after"]
            assert frozen.json()["error"]["code"] == "cache_unavailable"
        finally:
            redis_of_its_own.resume()
        seen = []
        until(lambda: seen.append(cache_status()) or seen[-1] == "hit", 15, "answers to be cached again")
        assert seen[0] == "miss" and len(seen) >= 2  # never the forgotten answer: a fresh one, stored anew
        redis_of_its_own.stop()
        dead = call(server.base_url, ADMIN_KEY, "DELETE", "/admin/cache", params={"deployment": MODEL_NAME})
        assert dead.status_code == 503


# ---------------------------------------------------------------- 6. rotations and key ids
def test_racing_rotations_have_exactly_one_winner_whose_secret_works(site):
    admin = AdminClient(site.base_url)
    for round_ in range(3):
        key = admin.key(admin.tenant(f"rotation-race-{round_}"))
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            responses = list(pool.map(lambda _: AdminClient(site.base_url).post(
                f"/admin/keys/{key['id']}/rotate", json={"grace_period_s": 0}), range(9)))
        winners = [r.json()["key"] for r in responses if r.status_code == 200]
        assert len(winners) == 1 and sorted(r.status_code for r in responses) == [200] + [409] * 8
        body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}
        assert call(site.base_url, winners[0], "POST", "/v1/completions", json=body).status_code == 200


async def test_an_unknown_key_id_reads_the_store_no_more_than_a_known_one(tmp_path, redis_server):
    import redis.asyncio as redis_async

    from shipyard.gateway.auth import Authenticator
    from shipyard.gateway.errors import AuthenticationError
    from shipyard.gateway.keys import format_key
    from shipyard.gateway.keystore import SYSTEM_TENANT, KeySpec, KeyStore
    from shipyard.store.db import Database

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await db.migrate()
    store = KeyStore(db, b"pepper-for-the-test-0123456789")
    await store.ensure_system_tenant()
    row, key = await store.create_key(KeySpec(tenant_id=SYSTEM_TENANT, role="developer"))
    reads: list[str] = []
    original = store.get_key_and_tenant

    async def counted(key_id):
        reads.append(key_id)
        return await original(key_id)

    store.get_key_and_tenant = counted
    client = redis_async.Redis.from_url(redis_server.url)
    auth = Authenticator(store, client, cache_ttl_s=0.05)
    wrong_secret = key[:-4] + "0000"
    unknown = format_key("unknownid0000000", "x" * 32)
    for token in (wrong_secret, unknown):
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                await auth.authenticate(token, defer_freshness=True)
            await asyncio.sleep(0.06)  # past the cache's freshness
    assert reads.count(row.id) == reads.count("unknownid0000000") == 1
    await client.aclose()
    await db.close()
