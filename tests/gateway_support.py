"""Helpers for gateway tests: a small client for the admin API, configs, raw calls."""

from __future__ import annotations

import httpx
from conftest import MODEL_NAME, deployment

ADMIN_KEY = "test-admin-key-0123456789-abcdef"


class AdminClient:
    def __init__(self, base_url: str, key: str = ADMIN_KEY):
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=30)

    def tenant(self, name: str, **limits) -> str:
        response = self.http.post("/admin/tenants", json={"name": name, **limits})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def key(self, tenant_id: str, role: str = "developer", **fields) -> dict:
        response = self.http.post("/admin/keys", json={"tenant_id": tenant_id, "role": role, **fields})
        assert response.status_code == 201, response.text
        return response.json()

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.http.post(path, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.http.get(path, **kwargs)


def gateway_config(tiny_model, **gateway) -> dict:
    return {"deployments": {MODEL_NAME: deployment(tiny_model)}, "gateway": gateway}


def call(base_url: str, key: str | None, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{base_url}{path}", headers=headers, timeout=30, **kwargs)


def chat_body(max_tokens: int = 2) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
