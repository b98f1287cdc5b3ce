"""Prefix-affinity routing over two real worker replicas: requests that share a system prompt
land on the replica that already holds its KV blocks, different prompts still spread, and a
replica made hot by its prefix's traffic sheds to the other."""

from __future__ import annotations

import collections
import concurrent.futures
import time

import httpx
import pytest

from conftest import ServerProcess
from gateway_support import ADMIN_KEY, call

SYSTEMS = [f"You are assistant number {i}. " + "Answer questions about the Python standard library briefly. " * 4
           for i in range(4)]


@pytest.fixture(scope="module")
def gateway(tiny_model, tmp_path_factory):
    replicas = [{"engine": "launch", "kind": "worker", "model": str(tiny_model), "name": f"w{i}",
                 "poll_interval_s": 0.2} for i in range(2)]
    config = {"deployments": {"tiny": {"replicas": replicas, "balancer": "least_outstanding", "affinity_slack": 3}},
              "cache": {"exact": {"enabled": False}}}
    with ServerProcess(config, tmp_path_factory.mktemp("affinity"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the gateway is ready with one replica; these tests need both
            replicas = call(proc.base_url, ADMIN_KEY, "GET", "/admin/deployments").json()["data"][0]["replicas"]
            if all(r["ready"] and r["up"] for r in replicas):
                break
            time.sleep(0.2)
        yield proc


def _ask(gateway, system: str, question: str, max_tokens: int = 4) -> str:
    body = {"model": "tiny", "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    return response.headers["x-shipyard-served-by"]


def test_a_shared_system_prompt_sticks_to_one_replica_and_prefixes_spread(gateway):
    where = {i: {_ask(gateway, system, f"question {q}?") for q in range(4)} for i, system in enumerate(SYSTEMS)}
    assert all(len(replicas) == 1 for replicas in where.values()), where
    assert {replica for replicas in where.values() for replica in replicas} == {"w0", "w1"}  # load still spread


def test_a_hot_replica_sheds_to_the_other(gateway):
    system = "You are the hot assistant. " + "Explain itertools with care and with examples. " * 4
    home = _ask(gateway, system, "warm up")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        served = list(pool.map(lambda i: _ask(gateway, system, f"long question {i}", max_tokens=200), range(10)))
    counts = collections.Counter(served)
    assert counts[home] >= 4 and len(counts) == 2, counts  # most at home, the excess elsewhere
    metrics = httpx.get(f"{gateway.base_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    shed = next(line for line in metrics.splitlines() if line.startswith("shipyard:routing_affinity_shed_total"))
    assert float(shed.split()[-1]) >= 1
