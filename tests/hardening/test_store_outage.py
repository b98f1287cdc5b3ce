"""Items 8 and 18: a database outage does not take inference down, and timing does not tell
whether a key id exists."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call, gateway_config

BODY = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}


@pytest.fixture()
def own_postgres():
    from services import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("with_redis", [False, True], ids=["no-redis", "redis"])
def test_known_keys_keep_working_through_a_database_outage(tiny_model, tmp_path, own_postgres, request,
                                                           with_redis):
    gateway = {"key_cache_ttl_s": 0.2}
    if with_redis:
        gateway["redis_url"] = request.getfixturevalue("redis_server").url
    config = gateway_config(tiny_model, **gateway)
    config["store"] = {"url": own_postgres.url}
    with ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
        admin = AdminClient(server.base_url)
        tenant = admin.tenant("outage")
        known = admin.key(tenant)["key"]
        revoked = admin.key(tenant)
        never_used = admin.key(tenant)["key"]
        assert call(server.base_url, known, "POST", "/v1/completions", json=BODY).status_code == 200
        assert call(server.base_url, revoked["key"], "POST", "/v1/completions", json=BODY).status_code == 200
        assert admin.post(f"/admin/keys/{revoked['id']}/revoke").status_code == 200
        own_postgres.pause()
        try:
            time.sleep(0.5)  # past the key cache's freshness
            statuses = [call(server.base_url, known, "POST", "/v1/completions", json=BODY).status_code
                        for _ in range(20)]
            assert statuses == [200] * 20
            unknown = call(server.base_url, never_used, "POST", "/v1/completions", json=BODY)
            assert unknown.status_code == 503 and unknown.headers["retry-after"]
            assert unknown.json()["error"]["code"] == "auth_unavailable"
            # a revoked key stays refused, database or not
            assert call(server.base_url, revoked["key"], "POST", "/v1/completions", json=BODY).status_code in (401, 503)
            # admin writes need the database: a clean 503, not a traceback
            refused = admin.post("/admin/tenants", json={"name": "during-outage"})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
        finally:
            own_postgres.resume()
        assert call(server.base_url, never_used, "POST", "/v1/completions", json=BODY).status_code == 200
        assert "Traceback" not in server.log()


def test_unknown_and_known_key_ids_take_the_same_path(tmp_path):
    """The same queries and the same hashing whether or not the id exists."""
    from shipyard.gateway import keys
    from shipyard.gateway.auth import Authenticator
    from shipyard.gateway.errors import AuthenticationError
    from shipyard.gateway.keystore import KeySpec, KeyStore
    from shipyard.store.db import Database

    async def run() -> dict[str, tuple[int, int]]:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
        await db.migrate()
        store = KeyStore(db, b"pepper")
        tenant = await store.create_tenant("timing")
        row, _ = await store.create_key(KeySpec(tenant_id=tenant.id))
        authenticator = Authenticator(store, cache_ttl_s=60)
        counts = {"queries": 0, "hashes": 0}
        read, verify = store.get_key_and_tenant, keys.verify

        async def counting_read(key_id):
            counts["queries"] += 1
            return await read(key_id)

        def counting_verify(*args):
            counts["hashes"] += 1
            return verify(*args)

        store.get_key_and_tenant = counting_read
        keys.verify = counting_verify
        seen = {}
        try:
            for name, key_id in (("known", row.id), ("unknown", "nosuchkey000")):
                counts.update(queries=0, hashes=0)
                for _ in range(3):
                    with pytest.raises(AuthenticationError):
                        await authenticator.authenticate(keys.format_key(key_id, "wrong" * 8))
                seen[name] = (counts["queries"], counts["hashes"])
        finally:
            keys.verify = verify
            await db.close()
        return seen

    seen = asyncio.run(run())
    assert seen["known"] == seen["unknown"] == (1, 3)
