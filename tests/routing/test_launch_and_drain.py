"""A launched worker that dies is restarted and rejoins the pool; a drained replica takes no new
requests while its in-flight stream completes."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import httpx
import pytest

from conftest import ServerProcess
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, call


def _ask(server, model: str, **fields) -> httpx.Response:
    return call(server.base_url, ADMIN_KEY, "POST", "/v1/completions",
                json={"model": model, "prompt": "x", "max_tokens": 2, **fields})


def _stream_into(server, events: list[str], max_tokens: int) -> None:
    """One streamed completion of deployment "m"; its SSE payloads land in `events`."""
    body = {"model": "m", "prompt": "x", "max_tokens": max_tokens, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {ADMIN_KEY}"}) as response:
        events.extend(line[6:] for line in response.iter_lines() if line.startswith("data: "))


def test_a_launched_worker_that_crashes_is_restarted_and_rejoins(tiny_model, tmp_path):
    replica = {"engine": "launch", "kind": "worker", "model": str(tiny_model), "name": "w1", "poll_interval_s": 0.2,
               "restart_backoff_s": 0.2}
    config = {"deployments": {"tiny": {"replicas": [replica], "retries": 0}}}
    with ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
        assert _ask(server, "tiny").status_code == 200
        first_pid = int(re.search(r"replica w1: pid=(\d+)", server.log()).group(1))
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:  # not ready while it restarts (503), then back
            if len(re.findall(r"replica w1: pid=(\d+)", server.log())) == 2 and _ask(server, "tiny").status_code == 200:
                break
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.3)
        state = call(server.base_url, ADMIN_KEY, "GET", "/admin/deployments").json()["data"][0]
        assert state["replicas"][0]["ready"] is True
        pids = [int(p) for p in re.findall(r"replica w1: pid=(\d+)", server.log())]
    for pid in pids:  # the gateway's shutdown stops its children
        with pytest.raises(ProcessLookupError):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.2)


@pytest.fixture()
def pair():
    fakes = [FakeVLLM(name).start() for name in ("one", "two")]
    yield fakes
    for fake in fakes:
        fake.stop()


def test_a_drained_replica_gets_nothing_new_and_finishes_its_streams(pair, tmp_path):
    one, two = pair
    replicas = [{"engine": "openai_http", "url": f.url, "flavor": "vllm", "upstream_model": "m", "name": f.name,
                 "poll_interval_s": 0.2, "idle_timeout_s": 5} for f in pair]
    config = {"deployments": {"m": {"replicas": replicas, "balancer": "round_robin"}}}
    with ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
        one.mode, one.delay_s = "slow_stream", 0.3  # one's streams take a while
        two.mode = "ok"
        events: list[str] = []
        # round-robin: the first request goes to "one"
        reader = threading.Thread(target=_stream_into, args=(server, events, 8))
        reader.start()
        time.sleep(0.5)
        drained = call(server.base_url, ADMIN_KEY, "POST", "/admin/deployments/m/replicas/one/drain")
        assert drained.status_code == 200
        assert {r["name"]: r["draining"] for r in drained.json()["replicas"]} == {"one": True, "two": False}
        before = len(one.requests)
        for _ in range(6):
            assert _ask(server, "m").status_code == 200
        assert len(one.requests) == before  # nothing new for the drained replica
        reader.join(30)
        assert events[-1] == "[DONE]" and not any("error" in json.loads(e) for e in events[:-1])
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"]) \
            == "".join(f"one-{i} " for i in range(8))
        assert call(server.base_url, ADMIN_KEY, "POST", "/admin/deployments/m/replicas/one/resume").status_code == 200
        for _ in range(4):
            assert _ask(server, "m").status_code == 200
        assert len(one.requests) > before
        assert call(server.base_url, ADMIN_KEY, "POST", "/admin/deployments/m/replicas/nope/drain").status_code == 404


def test_replicas_are_added_and_removed_live(pair, tmp_path):
    one, two = pair
    three = FakeVLLM("three").start()
    try:
        replicas = [{"engine": "openai_http", "url": f.url, "flavor": "vllm", "upstream_model": "m", "name": f.name,
                     "poll_interval_s": 0.2} for f in pair]
        config = {"deployments": {"m": {"replicas": replicas, "balancer": "round_robin"}}}
        with ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
            spec = {"engine": "openai_http", "url": three.url, "flavor": "vllm", "upstream_model": "m",
                    "name": "three", "poll_interval_s": 0.2}
            added = call(server.base_url, ADMIN_KEY, "POST", "/admin/deployments/m/replicas", json=spec)
            assert added.status_code == 201, added.text
            assert [r["name"] for r in added.json()["replicas"]] == ["one", "two", "three"]
            assert call(server.base_url, ADMIN_KEY, "POST", "/admin/deployments/m/replicas",
                        json=spec).status_code == 409  # the name is taken
            assert call(server.base_url, ADMIN_KEY, "POST", "/admin/deployments/m/replicas",
                        json={"engine": "openai_http"}).status_code == 400  # no url
            for _ in range(6):
                assert _ask(server, "m").status_code == 200
            assert three.served == 2
            one.mode, one.delay_s = "slow_stream", 0.2
            events: list[str] = []
            reader = threading.Thread(target=_stream_into, args=(server, events, 6))  # round-robin: lands on "one"
            reader.start()
            time.sleep(0.4)
            removed = call(server.base_url, ADMIN_KEY, "DELETE", "/admin/deployments/m/replicas/one")
            assert removed.status_code == 200  # answered once its stream had finished
            reader.join(30)
            assert events[-1] == "[DONE]" and "".join(
                json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"]) == \
                "".join(f"one-{i} " for i in range(6))
            assert [r["name"] for r in removed.json()["replicas"]] == ["two", "three"]
            before = len(one.requests)
            for _ in range(4):
                assert _ask(server, "m").status_code == 200
            assert len(one.requests) == before
    finally:
        three.stop()
