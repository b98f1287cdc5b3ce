"""Every route × every role × own/foreign tenant → exactly the designed status."""

from __future__ import annotations

import pytest

from conftest import MODEL_NAME
from gateway_support import ADMIN_KEY, AdminClient, call, chat_body

ROLES = ("admin", "tenant-admin", "developer", "viewer", "metrics")


@pytest.fixture(scope="module")
def world(auth_server, admin: AdminClient):
    own = admin.tenant("matrix-own")
    foreign = admin.tenant("matrix-foreign")
    keys = {"admin": ADMIN_KEY}
    for role in ROLES[1:]:
        keys[role] = admin.key(own, role)["key"]
    return {"own": own, "foreign": foreign, "keys": keys, "admin": admin}


def _target_key(world, tenant: str) -> str:
    return world["admin"].key(world[tenant], "developer")["id"]


# (method, path template, body, {role: status}) with {tenant} and {key} filled per case.
INFERENCE = {"admin": 200, "tenant-admin": 200, "developer": 200, "viewer": 403}
READ_MODELS = {r: 200 for r in ROLES if r != "metrics"}
CASES = [
    ("POST", "/v1/chat/completions", "chat", None, INFERENCE),
    ("POST", "/v1/completions", "completion", None, INFERENCE),
    ("GET", "/v1/models", None, None, READ_MODELS),
    ("GET", f"/v1/models/{MODEL_NAME}", None, None, READ_MODELS),
    # /metrics is global: only admins and metrics-role keys (made by admins) read it
    ("GET", "/metrics", None, None, {"admin": 200, "tenant-admin": 403, "developer": 403, "viewer": 403,
                                     "metrics": 200}),
    ("PATCH", "/admin/tenants/{tenant}", "tenant-update", "own",
     {"admin": 200, "tenant-admin": 403, "developer": 403, "viewer": 403}),
    ("POST", "/tokenize", "tokenize", None, INFERENCE),
    ("POST", "/detokenize", "detokenize", None, INFERENCE),
    ("POST", "/admin/tenants", "tenant", None, {"admin": 201, "tenant-admin": 403, "developer": 403, "viewer": 403}),
    ("GET", "/admin/tenants", None, None, {"admin": 200, "tenant-admin": 200, "developer": 403, "viewer": 200}),
    ("GET", "/admin/tenants/{tenant}", None, "own", {"admin": 200, "tenant-admin": 200, "developer": 403, "viewer": 200}),
    ("GET", "/admin/tenants/{tenant}", None, "foreign", {"admin": 200, "tenant-admin": 404, "developer": 403, "viewer": 404}),
    ("POST", "/admin/keys", "key", "own", {"admin": 201, "tenant-admin": 201, "developer": 403, "viewer": 403}),
    ("POST", "/admin/keys", "key", "foreign", {"admin": 201, "tenant-admin": 404, "developer": 403, "viewer": 403}),
    ("GET", "/admin/keys", None, None, {"admin": 200, "tenant-admin": 200, "developer": 403, "viewer": 403}),
    ("GET", "/admin/keys/{key}", None, "own", {"admin": 200, "tenant-admin": 200, "developer": 403, "viewer": 403}),
    ("GET", "/admin/keys/{key}", None, "foreign", {"admin": 200, "tenant-admin": 404, "developer": 403, "viewer": 403}),
    ("POST", "/admin/keys/{key}/rotate", None, "own", {"admin": 200, "tenant-admin": 200, "developer": 403, "viewer": 403}),
    ("POST", "/admin/keys/{key}/rotate", None, "foreign", {"admin": 200, "tenant-admin": 404, "developer": 403, "viewer": 403}),
    ("POST", "/admin/keys/{key}/revoke", None, "own", {"admin": 200, "tenant-admin": 200, "developer": 403, "viewer": 403}),
    ("POST", "/admin/keys/{key}/revoke", None, "foreign", {"admin": 200, "tenant-admin": 404, "developer": 403, "viewer": 403}),
    ("GET", "/admin/usage", None, None, {"admin": 200, "tenant-admin": 200, "developer": 403, "viewer": 200}),
    ("GET", "/admin/usage?tenant_id={tenant}", None, "foreign", {"admin": 200, "tenant-admin": 404, "developer": 403, "viewer": 404}),
    ("GET", "/admin/whoami", None, None, {r: 200 for r in ROLES}),
]


def _body(kind, world, tenant, counter=[0]):
    counter[0] += 1
    if kind == "chat":
        return chat_body()
    if kind == "completion":
        return {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}
    if kind == "tenant":
        return {"name": f"made-{counter[0]}"}
    if kind == "key":
        return {"tenant_id": world[tenant], "role": "developer"}
    if kind == "tenant-update":
        return {"rpm": 1000}
    if kind == "tokenize":
        return {"model": MODEL_NAME, "prompt": "hello"}
    if kind == "detokenize":
        return {"model": MODEL_NAME, "tokens": [5, 6]}
    return None


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]} {c[1]} {c[3] or ''}".strip())
def test_route_role_tenant(auth_server, world, case, role):
    method, template, kind, tenant, expected = case
    path = template
    if "{tenant}" in path:
        path = path.replace("{tenant}", world[tenant])
    if "{key}" in path:
        path = path.replace("{key}", _target_key(world, tenant))
    body = _body(kind, world, tenant)
    response = call(auth_server.base_url, world["keys"][role], method, path,
                    **({"json": body} if body is not None else {}))
    # a role a case does not name may do nothing there
    assert response.status_code == expected.get(role, 403), (role, method, path, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_tenant_scoped_lists_show_only_own_tenant(auth_server, world):
    for role in ("tenant-admin", "viewer"):
        tenants = call(auth_server.base_url, world["keys"][role], "GET", "/admin/tenants").json()["data"]
        assert [t["id"] for t in tenants] == [world["own"]]
    keys = call(auth_server.base_url, world["keys"]["tenant-admin"], "GET", "/admin/keys").json()["data"]
    assert keys and {k["tenant_id"] for k in keys} == {world["own"]}
    everything = call(auth_server.base_url, ADMIN_KEY, "GET", "/admin/tenants").json()["data"]
    assert {world["own"], world["foreign"]} <= {t["id"] for t in everything}


def test_tenant_admin_cannot_mint_admin_keys(auth_server, world):
    response = call(auth_server.base_url, world["keys"]["tenant-admin"], "POST", "/admin/keys",
                    json={"tenant_id": world["own"], "role": "admin"})
    assert response.status_code == 403


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]} {c[1]} {c[3] or ''}".strip())
@pytest.mark.parametrize("key", [None, "sy-nosuchkey00-0123456789abcdef", "not-a-key-at-all-but-long"])
def test_no_route_without_a_valid_key(auth_server, world, case, key):
    method, template, kind, tenant, _ = case
    path = template.replace("{tenant}", world.get(tenant or "own")).replace("{key}", "anything")
    body = _body(kind, world, tenant or "own")
    response = call(auth_server.base_url, key, method, path, **({"json": body} if body is not None else {}))
    assert response.status_code == 401, (method, path, response.text)
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_public_routes(auth_server):
    assert call(auth_server.base_url, None, "GET", "/health").status_code == 200
    assert call(auth_server.base_url, None, "GET", "/ready").status_code == 200


def test_every_route_has_a_policy(tiny_model, tmp_path, monkeypatch):
    from shipyard.api.authorization import ROUTE_PERMISSIONS
    from shipyard.server.app import build_app
    from shipyard.config import ShipyardConfig

    monkeypatch.setenv("SHIPYARD_DATA_DIR", str(tmp_path))
    app = build_app(ShipyardConfig.model_validate({"deployments": {MODEL_NAME: {"model": str(tiny_model)}}}))
    def flatten(routes):
        for route in routes:
            inner = getattr(route, "original_router", None)  # FastAPI's included routers
            if inner is not None:
                yield from flatten(inner.routes)
            else:
                yield route

    routes = list(flatten(app.routes))
    assert len(routes) > 15
    for route in routes:
        methods = getattr(route, "methods", None) or {"WS"}
        for method in methods - {"HEAD"}:
            assert (method, route.path) in ROUTE_PERMISSIONS, (method, route.path)


@pytest.mark.parametrize("role, expected", [("admin", None), ("developer", None), ("viewer", 403),
                                            ("tenant-admin", None), ("no key", 401), ("bad key", 401)])
async def test_websocket_routes_are_authorized_like_http(auth_server, world, role, expected):
    import json

    import websockets

    key = {"no key": None, "bad key": "sy-nosuchkey00-0123456789abcdef"}.get(role, world["keys"].get(role))
    headers = {"authorization": f"Bearer {key}"} if key else {}
    url = auth_server.base_url.replace("http", "ws") + "/v1/chat/completions"
    if expected is not None:
        with pytest.raises(websockets.InvalidStatus) as excinfo:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert excinfo.value.response.status_code == expected
        return
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps(chat_body(2)))
        first = json.loads(await ws.recv())
        assert first["object"] == "chat.completion.chunk"
