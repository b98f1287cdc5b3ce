"""Item 13: past the shutdown grace period, streams end with an error event and [DONE], what was
sent is billed, and nothing is cut mid-frame or logged as a traceback."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3

import aiohttp

from conftest import MODEL_NAME, ServerProcess
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, gateway_config


async def _stream(session, url: str, started: asyncio.Event) -> dict:
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 500, "stream": True, "ignore_eos": True}
    out = {"tokens": 0, "errors": [], "done": False}
    async with session.post(url, json=body, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as response:
        assert response.status == 200
        started.set()
        async for raw in response.content:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    out["errors"].append(event["error"])
                elif event["choices"] and event["choices"][0]["text"]:
                    out["tokens"] += 1
    return out


def test_streams_past_the_grace_period_end_cleanly_and_are_billed(tiny_model, tmp_path):
    # An engine that paces its tokens (20 ms each, 500 of them): every stream is still running when
    # the 1 s grace ends, however fast the machine (the embedded model could finish them all first).
    upstream = FakeVLLM("paced", model="m")
    upstream.mode, upstream.delay_s = "slow_stream", 0.02
    upstream.start()
    config = gateway_config(tiny_model, usage_flush_interval_s=0.1)
    config["deployments"][MODEL_NAME] = {"replicas": [{"engine": "openai_http", "url": upstream.url, "flavor": "vllm",
                                                       "upstream_model": "m"}], "retries": 0}
    config["server"] = {"shutdown_grace_s": 1}
    server = ServerProcess(config, tmp_path, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY})
    try:
        server.wait_ready()
    except BaseException:
        upstream.stop()
        raise

    async def run() -> list[dict]:
        url = f"{server.base_url}/v1/completions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            started = [asyncio.Event() for _ in range(12)]
            tasks = [asyncio.ensure_future(_stream(session, url, event)) for event in started]
            for event in started:
                await event.wait()
            server.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(run())
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        server.stop()
        upstream.stop()
    assert all(r["done"] for r in results)  # every stream was ended, none cut mid-way
    cut = [r for r in results if r["errors"]]
    assert cut and all(r["errors"][0]["code"] == "server_shutting_down" for r in cut)
    assert len(cut) == 12 and all(r["tokens"] > 0 for r in cut)  # all were generating when the grace ran out
    log = server.log()
    assert "Traceback" not in log and "Cancel" not in log
    db = sqlite3.connect(tmp_path / f"data-{server.port}" / "shipyard.db")
    rows = db.execute("SELECT status, completion_tokens FROM usage_records WHERE key_id = 'bootstrap-admin'").fetchall()
    assert len(rows) == 12
    billed_cut = [tokens for status, tokens in rows if status == 503]
    assert len(billed_cut) == len(cut)
    assert sum(billed_cut) >= sum(r["tokens"] for r in cut) > 0
