"""`shipyard worker`: one engine replica as its own process behind an internal token."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from conftest import free_port

TOKEN = "worker-internal-token-0123456789"


@pytest.fixture(scope="module")
def worker(tiny_model, tmp_path_factory):
    port = free_port()
    workdir = tmp_path_factory.mktemp("worker")
    log = open(workdir / "worker.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHIPYARD_DATA_DIR": str(workdir / "data"),
           "SHIPYARD_WORKER_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "worker", "--model", str(tiny_model),
                             "--served-model-name", "tiny", "--port", str(port), "--num-threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (workdir / "worker.log").read_text()
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (workdir / "worker.log").read_text()
        time.sleep(0.2)
    yield url, workdir
    proc.terminate()
    proc.wait(20)
    log.close()


def test_the_openai_client_works_with_the_token(worker):
    url, _ = worker
    with openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0) as client:
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3)
        assert reply.usage.completion_tokens >= 1
        chunks = list(client.completions.create(model="tiny", prompt="def", max_tokens=3, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        assert chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", "sy-abc-def"])
def test_inference_without_the_token_is_a_401(worker, token):
    url, _ = worker
    headers = {"authorization": f"Bearer {token}"} if token else {}
    for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
                         ("GET", "/metrics")):
        response = httpx.request(method, f"{url}{path}", headers=headers, timeout=30,
                                 json={"model": "tiny", "prompt": "x"} if method == "POST" else None)
        assert response.status_code == 401, (path, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key=token or "none", max_retries=0).models.list()


def test_probes_are_open_and_there_is_no_admin_api_or_store(worker):
    url, workdir = worker
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/ready").status_code == 200
    metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert metrics.status_code == 200 and "shipyard:num_requests_running" in metrics.text
    assert httpx.get(f"{url}/admin/whoami", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 404
    assert not (workdir / "data").exists()  # no database, no pepper, no spool


def test_a_short_token_is_refused(tiny_model):
    result = subprocess.run([sys.executable, "-m", "shipyard", "worker", "--model", str(tiny_model), "--port", "1",
                             "--token", "short"], capture_output=True, text=True,
                            env={**os.environ, "SHIPYARD_WORKER_TOKEN": ""})
    assert result.returncode != 0 and "16+ characters" in result.stdout + result.stderr
