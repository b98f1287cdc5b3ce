"""Cost per end user: the request's `user` field is kept with its usage record, and the cost per
user, per key and per tenant are the sums of the records' costs at the price table's rates."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call, gateway_config

PRICES = {"default": {"prompt": 1.0, "completion": 2.0}}  # USD per million tokens


@pytest.fixture(scope="module")
def priced(tiny_model, tmp_path_factory):
    config = gateway_config(tiny_model, usage_flush_interval_s=0.1, prices=PRICES)
    config["cache"] = {"exact": {"enabled": False}}  # every request is priced as computed
    with ServerProcess(config, tmp_path_factory.mktemp("priced"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


def test_cost_per_user_key_and_tenant_are_the_sums_of_the_records(priced):
    admin = AdminClient(priced.base_url)
    tenants = {name: admin.tenant(name) for name in ("shop", "bank")}
    keys = {name: admin.key(tenant)["key"] for name, tenant in tenants.items()}
    expected: dict[tuple[str, str | None], float] = {}
    for tenant, user, max_tokens in [("shop", "alice", 3), ("shop", "alice", 5), ("shop", "bob", 4),
                                     ("shop", None, 2), ("bank", "alice", 6)]:
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": max_tokens,
                "ignore_eos": True, **({"user": user} if user else {})}
        usage = httpx.post(f"{priced.base_url}/v1/chat/completions", json=body, timeout=30,
                           headers={"authorization": f"Bearer {keys[tenant]}"}).json()["usage"]
        cost = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
        expected[(tenant, user)] = expected.get((tenant, user), 0.0) + cost
    time.sleep(0.5)
    rows = call(priced.base_url, ADMIN_KEY, "GET", "/admin/usage?group_by=tenant_id&group_by=user").json()["data"]
    got = {(next(n for n, t in tenants.items() if t == r["tenant_id"]), r["user"]): r["cost_usd"]
           for r in rows if r["tenant_id"] in tenants.values()}
    assert got.keys() == expected.keys()
    for group, cost in expected.items():
        assert got[group] == pytest.approx(cost, rel=1e-9), group
    by_tenant = call(priced.base_url, ADMIN_KEY, "GET", "/admin/usage?group_by=tenant_id").json()["data"]
    shop = next(r for r in by_tenant if r["tenant_id"] == tenants["shop"])
    assert shop["cost_usd"] == pytest.approx(sum(c for (t, _), c in expected.items() if t == "shop"))
    # a tenant's own view: its users only, even when it names another tenant's user
    own = call(priced.base_url, keys["bank"], "GET", "/admin/usage?group_by=user&user=alice")
    assert own.status_code == 403  # a developer key reads no usage
    viewer = admin.key(tenants["bank"], role="viewer")["key"]
    mine = call(priced.base_url, viewer, "GET", "/admin/usage?group_by=user&user=alice").json()["data"]
    assert len(mine) == 1 and mine[0]["cost_usd"] == pytest.approx(expected[("bank", "alice")])
    too_long = httpx.post(f"{priced.base_url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {keys['shop']}"},
                          json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "user": "u" * 257})
    assert too_long.status_code == 400
