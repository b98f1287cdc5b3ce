"""What the demo-model benchmarks share: a `shipyard serve` process started from a config (and
stopped by the caller), and one streamed chat call timed from the client's side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gateway_overhead import ADMIN, _wait, free_port

HEADERS = {"authorization": f"Bearer {ADMIN}"}


def serve_config(config: dict, workdir: Path, name: str) -> tuple[subprocess.Popen, str]:
    """`shipyard serve` with this config, ready; returns the process and its URL."""
    import yaml

    port = free_port()
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "SHIPYARD_ADMIN_KEY": ADMIN, "SHIPYARD_DATA_DIR": str(workdir / f"data-{name}"),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "--config", str(path), "--port", str(port)],
                            env=env, stdout=open(workdir / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    _wait(f"http://127.0.0.1:{port}/ready", timeout=300)
    return proc, f"http://127.0.0.1:{port}"


def serve_deployment(deployment: dict, workdir: Path, name: str) -> tuple[subprocess.Popen, str]:
    """One deployment named `demo`, quiet logs."""
    return serve_config({"deployments": {"demo": deployment}, "server": {"log_level": "warning"}}, workdir, name)


async def stream_chat(session, url: str, body: dict) -> tuple[float, int]:
    """(TTFT in ms, completion tokens) of one streamed chat completion."""
    start = time.perf_counter()
    first, tokens = None, 0
    async with session.post(f"{url}/v1/chat/completions", json={**body, "stream": True,
                                                                "stream_options": {"include_usage": True}},
                            headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            event = json.loads(line[5:])
            if first is None and any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return (first or 0.0) * 1000, tokens
