"""Many streams at once, each exactly its own tokens; a vanished client frees its slot."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODEL_NAME


def metric_values(server) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def gauge(server, name: str) -> float:
    return metric_values(server)[(name, (("model_name", MODEL_NAME),))]


async def _stream_completion(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int) -> list[int]:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "logprobs": 0}
    text = ""
    async with session.post(url, json=body) as response:
        assert response.status == 200
        async for line in response.content:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text += json.loads(line[6:])["choices"][0]["text"]
    return text


async def test_sixteen_simultaneous_streams_without_cross_talk(server):
    url = f"{server.base_url}/v1/completions"
    prompts = [f"Prompt number {i}: {'abc' * i}" for i in range(16)]
    async with aiohttp.ClientSession() as session:
        alone = [await _stream_completion(session, url, p, 24) for p in prompts]
        together = await asyncio.gather(*[_stream_completion(session, url, p, 24) for p in prompts])
    assert together == alone
    assert len(set(alone)) > 1  # the prompts really lead to different outputs


async def _wait_idle(server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gauge(server, "shipyard:num_requests_running") == 0 and gauge(server, "shipyard:kv_cache_usage_perc") == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the engine still holds requests after the client left")


def _aborts(server) -> float:
    return metric_values(server).get(
        ("shipyard:request_success_total", (("finished_reason", "abort"), ("model_name", MODEL_NAME))), 0.0)


async def test_streaming_client_disconnect_frees_slot(server):
    await _wait_idle(server)
    aborts_before = _aborts(server)
    body = {"model": MODEL_NAME, "prompt": "tell me", "max_tokens": 480, "stream": True, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{server.base_url}/v1/completions", json=body)
        received = 0
        async for line in response.content:
            if line.startswith(b"data: "):
                received += 1
                if received == 3:
                    break
        assert gauge(server, "shipyard:num_requests_running") == 1
        response.close()  # drop the connection mid-stream
    await _wait_idle(server)
    assert _aborts(server) == aborts_before + 1


async def test_non_streaming_client_disconnect_frees_slot(server):
    await _wait_idle(server)
    aborts_before = _aborts(server)
    body = {"model": MODEL_NAME, "prompt": "tell me", "max_tokens": 480, "ignore_eos": True, "n": 8}
    async with aiohttp.ClientSession() as session:
        task = asyncio.ensure_future(session.post(f"{server.base_url}/v1/completions", json=body))
        deadline = time.monotonic() + 10
        while gauge(server, "shipyard:num_requests_running") == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()  # the client gives up and closes the connection
    await _wait_idle(server)
    assert _aborts(server) == aborts_before + 1
