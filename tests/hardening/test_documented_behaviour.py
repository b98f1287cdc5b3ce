"""Items 21, 26, 27: the OpenAPI description lists what the server answers, the README's rate-limit
headers sentence is true, and `make bench` builds the demo model it needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx

from conftest import MODEL_NAME
from gateway_support import ADMIN_KEY, call

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_documents_the_statuses_the_server_sends(auth_server, admin):
    spec = httpx.get(f"{auth_server.base_url}/openapi.json").json()
    assert '"422"' not in str(spec).replace("'", '"')
    assert "HTTPValidationError" not in str(spec)

    def documented(method: str, path: str) -> set[int]:
        return {int(s) for s in spec["paths"][path][method]["responses"]}

    limited = admin.key(admin.tenant("openapi-limited"), rpm=1)["key"]
    viewer = admin.key(admin.tenant("openapi-viewer"), "viewer")["key"]
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    observed = [
        ("post", "/v1/chat/completions", call(auth_server.base_url, None, "POST", "/v1/chat/completions", json=chat)),
        ("post", "/v1/chat/completions", call(auth_server.base_url, viewer, "POST", "/v1/chat/completions", json=chat)),
        ("post", "/v1/chat/completions", call(auth_server.base_url, ADMIN_KEY, "POST", "/v1/chat/completions",
                                              json={"model": MODEL_NAME})),
        ("post", "/v1/chat/completions", call(auth_server.base_url, ADMIN_KEY, "POST", "/v1/chat/completions",
                                              json={**chat, "model": "nope"})),
        ("post", "/v1/chat/completions", httpx.post(f"{auth_server.base_url}/v1/chat/completions", content=b"x",
                                                    headers={"authorization": f"Bearer {ADMIN_KEY}",
                                                             "content-type": "text/plain"})),
        ("post", "/v1/chat/completions", httpx.post(f"{auth_server.base_url}/v1/chat/completions",
                                                    content=b"x" * (3 * 1024 * 1024),
                                                    headers={"authorization": f"Bearer {ADMIN_KEY}",
                                                             "content-type": "application/json"})),
        ("post", "/admin/tenants", admin.post("/admin/tenants", json={"name": "openapi-limited"})),
        ("get", "/admin/keys/{key_id}", admin.get("/admin/keys/nosuchkey")),
        ("get", "/metrics", call(auth_server.base_url, viewer, "GET", "/metrics")),
    ]
    for _ in range(2):
        observed.append(("post", "/v1/completions", call(auth_server.base_url, limited, "POST", "/v1/completions",
                                                         json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 1})))
    statuses = set()
    for method, path, response in observed:
        statuses.add(response.status_code)
        assert response.status_code in documented(method, path) | {200, 201}, (method, path, response.status_code)
    assert {400, 401, 403, 404, 409, 413, 415, 429} <= statuses


def test_rate_limit_headers_are_as_the_readme_says(auth_server, admin):
    readme = (ROOT / "README.md").read_text()
    assert "a call that no such limit governs carries none" in re.sub(r"\s+", " ", readme)
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}
    unlimited = admin.key(admin.tenant("headers-none"))["key"]
    response = call(auth_server.base_url, unlimited, "POST", "/v1/completions", json=body)
    assert not [h for h in response.headers if h.startswith("x-ratelimit-")]
    limited = admin.key(admin.tenant("headers-some"), rpm=100, tpm=10_000)["key"]
    response = call(auth_server.base_url, limited, "POST", "/v1/completions", json=body)
    for name in ("limit", "remaining", "reset"):
        assert f"x-ratelimit-{name}-requests" in response.headers and f"x-ratelimit-{name}-tokens" in response.headers


def test_make_bench_builds_the_demo_model_first():
    plan = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert plan.index("model build-demo") < plan.index("bench/serving.py")
