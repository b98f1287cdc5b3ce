"""`shipyard serve --workers N`: several server processes on one port, one gateway in effect.

Limits stay exact across the processes (through Redis), usage from every process lands in the
store, /metrics sums every process's counters, a killed worker is replaced, and configurations
that several processes would serve wrongly are refused at start with the reason."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from conftest import ServerProcess
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient, call


@pytest.fixture(scope="module")
def upstream():
    fake = FakeVLLM("w").start()
    yield fake
    fake.stop()


def _config(upstream, **gateway) -> dict:
    return {"deployments": {"m": {"engine": "openai_http", "url": upstream.url, "flavor": "vllm", "upstream_model": "m"}},
            "gateway": {"usage_flush_interval_s": 0.1, **gateway}}


def _ask(server, key: str) -> int:
    # a fresh connection each time, so the kernel spreads them over the workers
    return call(server.base_url, key, "POST", "/v1/completions",
                json={"model": "m", "prompt": "x", "max_tokens": 2}).status_code


def _worker_pids(server, expected: int = 0, timeout: float = 60.0) -> list[int]:
    """The worker processes the log names; waits until `expected` have started (ready means one has)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", server.log())]
        if len(set(pids)) >= expected or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def test_two_workers_share_limits_usage_and_metrics(upstream, redis_server, tmp_path):
    config = _config(upstream, redis_url=redis_server.url)
    with ServerProcess(config, tmp_path, extra_args=["--workers", "2"], env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
        assert len(set(_worker_pids(server, 2))) == 2
        admin = AdminClient(server.base_url)
        tenant = admin.tenant("shared")
        limited = admin.key(tenant, rpm=7)["key"]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: _ask(server, limited), range(20)))
        assert statuses.count(200) == 7 and statuses.count(429) == 13  # exact, whichever process answered
        free = admin.key(tenant)["key"]
        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(lambda _: _ask(server, free), range(12))) == {200}
        metrics = httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
        served = sum(float(v) for v in re.findall(r'^shipyard:request_success_total\{[^}]*model_name="m"[^}]*\} (\S+)',
                                                  metrics, re.M))
        assert served == 19  # every process's count, summed
        deadline = time.monotonic() + 10
        while True:  # each process meters its own requests (refusals included) into the one store
            rows = admin.get("/admin/usage", params={"tenant_id": tenant}).json()["data"]
            if sum(r["requests"] for r in rows) == 32:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
    assert "requests in flight get" in server.log() and not re.search(r"shutting down: [1-9]", server.log())


def test_a_killed_worker_is_replaced(upstream, tmp_path):
    config = {**_config(upstream), "auth": "disabled"}
    with ServerProcess(config, tmp_path, extra_args=["--workers", "2"]) as server:
        first = _worker_pids(server, 2)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 90
        while len(_worker_pids(server)) < 3 or "Application startup complete" not in server.log().split(
                f"[{_worker_pids(server)[-1]}]")[-1]:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.3)
        assert all(_ask(server, None) == 200 for _ in range(6))


@pytest.mark.parametrize("case, message", [
    ("auth_without_redis", "needs gateway.redis_url"),
    ("launched_replicas", "launch engine servers"),
    ("autoscaled", "launch engine servers"),  # each process would run its own autoscaler
])
def test_what_several_processes_would_serve_wrongly_is_refused(upstream, tiny_model, tmp_path, case, message):
    if case == "auth_without_redis":
        config = _config(upstream)
    elif case == "autoscaled":
        template = {"engine": "launch", "kind": "worker", "model": str(tiny_model)}
        config = {"auth": "disabled", "deployments": {"m": {"autoscaling": {"min_replicas": 0, "replica": template}}}}
    else:
        config = {"auth": "disabled", "deployments": {"m": {"replicas": [
            {"engine": "launch", "kind": "worker", "model": str(tiny_model), "name": "w"}]}}}
    path = tmp_path / "shipyard.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "shipyard", "serve", "--config", str(path), "--port", "0",
                             "--workers", "2"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SHIPYARD_DATA_DIR": str(tmp_path / "data"), "SHIPYARD_REDIS_URL": ""})
    assert result.returncode != 0 and message in result.stdout + result.stderr
