"""Scale to zero: a deployment with `min_replicas: 0` starts with no replica, holds the first
requests in a bounded buffer while the autoscaler starts one (real worker processes, the tiny
model), serves every held request once it is ready, goes back to zero when idle, and turns away
what is past the buffer or its wait limit with 503 and Retry-After."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from pydantic import ValidationError

from conftest import ServerProcess, until
from shipyard.config import RoutedDeployment
from shipyard.engines.errors import EngineOverloadedError
from shipyard.scaling.cold_start import ColdStartBuffer

WORKER = {"engine": "launch", "kind": "worker", "model": "/nonexistent"}


def test_config_keeps_listed_replicas_out_of_scale_to_zero():
    with pytest.raises(ValidationError, match="never removed"):
        RoutedDeployment(replicas=[WORKER], autoscaling={"min_replicas": 0, "replica": WORKER})
    with pytest.raises(ValidationError, match="at least one replica"):
        RoutedDeployment(replicas=[])
    with pytest.raises(ValidationError, match="above autoscaling.max_replicas"):
        RoutedDeployment(replicas=[WORKER, WORKER], autoscaling={"max_replicas": 1, "replica": WORKER})
    assert RoutedDeployment(autoscaling={"min_replicas": 0, "replica": WORKER}).replicas == []


async def test_the_buffer_holds_until_ready_and_bounds_what_it_holds():
    state = {"ready": False, "wakes": 0}

    def wake():
        state["wakes"] += 1

    buffer = ColdStartBuffer("d", capacity=2, timeout_s=5, available=lambda: state["ready"], wake=wake)
    deadline = time.monotonic() + 60
    held = [asyncio.create_task(buffer(deadline)) for _ in range(2)]
    await asyncio.sleep(0.1)
    assert buffer.waiting == 2 and state["wakes"] == 2
    with pytest.raises(EngineOverloadedError, match="buffer of 2 requests is full") as full:
        await buffer(deadline)
    assert full.value.retry_after_s >= 1
    state["ready"] = True
    await asyncio.wait_for(asyncio.gather(*held), 2)
    assert (buffer.waiting, buffer.served, buffer.rejected) == (0, 2, 1)
    assert buffer.last_cold_start_s is not None and buffer.last_cold_start_s >= 0.1
    await buffer(deadline)  # a replica is there: no wait at all

    state["ready"] = False
    impatient = ColdStartBuffer("d", capacity=2, timeout_s=0.2, available=lambda: state["ready"], wake=wake)
    impatient.last_cold_start_s = 30.0
    started = time.monotonic()
    with pytest.raises(EngineOverloadedError, match="no replica was ready") as late:
        await impatient(deadline)
    assert time.monotonic() - started >= 0.2 and late.value.retry_after_s >= 29  # waited its limit; the rest of a cold start
    with pytest.raises(EngineOverloadedError):  # the request's own deadline is a limit too
        await buffer(time.monotonic() + 0.1)


@pytest.fixture(scope="module")
def zero(tiny_model, tmp_path_factory):
    worker = {**WORKER, "model": str(tiny_model)}
    scaling = {"min_replicas": 0, "max_replicas": 2, "target_queue_per_replica": 4, "interval_s": 0.5,
               "scale_down_window_s": 1, "scale_down_interval_s": 1, "scale_to_zero_delay_s": 3,
               "drain_timeout_s": 30, "replica": worker}
    config = {"auth": "disabled", "cache": {"exact": {"enabled": False}},
              "deployments": {"zero": {"autoscaling": {**scaling, "cold_start_buffer": 3}},
                              "impatient": {"autoscaling": {**scaling, "cold_start_timeout_s": 0.3,
                                                            "scale_to_zero_delay_s": 600}}}}
    with ServerProcess(config, tmp_path_factory.mktemp("zero")) as proc:
        proc.wait_for("/ready", 200)
        yield proc


def _view(proc, name: str) -> dict:
    return httpx.get(f"{proc.base_url}/admin/deployments/{name}/autoscaler", timeout=30).json()


def _ready_replicas(proc, name: str) -> int:
    replicas = httpx.get(f"{proc.base_url}/admin/deployments", timeout=30).json()["data"]
    return sum(r["ready"] for d in replicas if d["name"] == name for r in d["replicas"])


def _ask(proc, model: str = "zero") -> httpx.Response:
    body = {"model": model, "max_tokens": 8, "ignore_eos": True, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{proc.base_url}/v1/chat/completions", json=body, timeout=180)


def test_from_zero_the_held_requests_are_served_and_the_excess_turned_away(zero):
    assert _view(zero, "zero")["replicas"] == []  # nothing runs until a request comes
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _ask(zero), range(6)))
    served = [a for a in answers if a.status_code == 200]
    turned_away = [a for a in answers if a.status_code != 200]
    assert len(served) == 3 and all(a.json()["usage"]["completion_tokens"] == 8 for a in served)
    for answer in turned_away:  # past the buffer of 3: at once, in OpenAI's error shape, with a retry hint
        assert answer.status_code == 503 and int(answer.headers["retry-after"]) >= 1
        assert "cold-start buffer" in answer.json()["error"]["message"]
    view = _view(zero, "zero")
    assert view["cold_start"]["served"] == 3 and view["cold_start"]["rejected"] == 3
    assert view["cold_start"]["last_cold_start_s"] > 0.5  # a worker process really started
    assert len(view["replicas"]) == 1  # three held requests fit one replica's target of four


def test_idle_goes_back_to_zero_and_the_next_request_cold_starts(zero):
    assert _ask(zero).status_code == 200
    until(lambda: _view(zero, "zero")["replicas"] == [] and not _view(zero, "zero")["draining"], 60,
           "never scaled to zero")
    view = _view(zero, "zero")
    assert any("down one" in r for d in view["decisions"] for r in d["reasons"])
    assert httpx.get(f"{zero.base_url}/ready", timeout=30).status_code == 200  # still takes requests
    answer = _ask(zero)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    metrics = httpx.get(f"{zero.base_url}/metrics", timeout=30).text
    assert 'shipyard:autoscaler_cold_start_rejected_total{model_name="zero"} 3.0' in metrics


def test_past_the_wait_limit_a_held_request_gets_503_and_the_replica_still_comes(zero):
    answer = _ask(zero, "impatient")  # refused by the wait limit (its message), not by a client timeout
    assert answer.status_code == 503
    assert "no replica was ready" in answer.json()["error"]["message"] and answer.headers["retry-after"]
    until(lambda: _ready_replicas(zero, "impatient") == 1, 120, "the replica asked for never came")
    again = _ask(zero, "impatient")
    assert again.status_code == 200, again.text
