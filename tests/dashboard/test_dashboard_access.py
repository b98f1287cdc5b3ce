"""Who may see the dashboard, over plain HTTP: an anonymous caller gets the sign-in page and no
data; a key of role viewer or above signs in by header or by the form's session cookie (HttpOnly,
SameSite, signed, never the key itself); other roles get 403; a forged, revoked or rotated
session is signed out; the pages forbid scripts and caching."""

from __future__ import annotations

import httpx
import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call, gateway_config


@pytest.fixture(scope="module")
def site(tiny_model, tmp_path_factory):
    config = gateway_config(tiny_model, usage_flush_interval_s=0.1)
    with ServerProcess(config, tmp_path_factory.mktemp("dash"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


def _get(site, path: str, key: str | None = None, cookies: dict | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{site.base_url}{path}", headers=headers, cookies=cookies, timeout=30)


def test_anonymous_callers_get_the_sign_in_page_and_no_data(site):
    for path in ("/dashboard", "/dashboard/cost", "/dashboard/alerts", f"/dashboard/deployments/{MODEL_NAME}"):
        page = _get(site, path)
        assert page.status_code == 200 and "Sign in" in page.text and "Requests (1 h)" not in page.text
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script
        assert page.headers["cache-control"] == "no-store"
    assert _get(site, "/dashboard", key="sy-nope-nope").status_code == 401


def test_roles_and_the_session_cookie(site):
    admin = AdminClient(site.base_url)
    tenant = admin.tenant("dash-tenant")
    viewer = admin.key(tenant, role="viewer")
    developer = admin.key(tenant)["key"]
    assert _get(site, "/dashboard", key=ADMIN_KEY).status_code == 200
    assert "Requests (1 h)" in _get(site, "/dashboard", key=viewer["key"]).text
    assert _get(site, "/dashboard", key=developer).status_code == 403
    bad = httpx.post(f"{site.base_url}/dashboard/login", data={"api_key": "sy-forged-key-0123456789"}, timeout=30)
    assert bad.status_code == 401 and "sy-forged-key-0123456789" not in bad.text
    refused = httpx.post(f"{site.base_url}/dashboard/login", data={"api_key": developer}, timeout=30)
    assert refused.status_code == 403 and developer not in refused.text
    signed = httpx.post(f"{site.base_url}/dashboard/login", data={"api_key": viewer["key"]}, timeout=30)
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
    set_cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/dashboard" in set_cookie
    session = signed.cookies["shipyard_dashboard"]
    secret = viewer["key"].rsplit("-", 1)[-1]
    assert secret not in session and viewer["key"] not in signed.text
    assert "Requests (1 h)" in _get(site, "/dashboard", cookies={"shipyard_dashboard": session}).text
    session_id, key_id, generation, expires, signature = session.split(".")
    for forged in (f"{session_id}.{key_id}.{generation}.{int(expires) + 999}.{signature}",  # extended
                   f"{session_id}.adminkey.{generation}.{expires}.{signature}",  # another key
                   f"{'0' * 32}.{key_id}.{generation}.{expires}.{signature}",  # another session
                   f"{session_id}.{key_id}.{generation}.{expires}.{'0' * 64}", "garbage", "a." * 300):
        assert "Sign in" in _get(site, "/dashboard", cookies={"shipyard_dashboard": forged}).text
    assert call(site.base_url, ADMIN_KEY, "POST", f"/admin/keys/{viewer['id']}/rotate").status_code == 200
    assert "Sign in" in _get(site, "/dashboard", cookies={"shipyard_dashboard": session}).text  # rotated: signed out
    out = httpx.post(f"{site.base_url}/dashboard/logout", timeout=30)
    assert out.status_code == 303 and 'shipyard_dashboard=""' in out.headers["set-cookie"]


def test_a_revoked_key_ends_its_sessions(site):
    admin = AdminClient(site.base_url)
    viewer = admin.key(admin.tenant("revoked-dash"), role="viewer")
    session = httpx.post(f"{site.base_url}/dashboard/login", data={"api_key": viewer["key"]},
                         timeout=30).cookies["shipyard_dashboard"]
    assert "Requests (1 h)" in _get(site, "/dashboard", cookies={"shipyard_dashboard": session}).text
    assert call(site.base_url, ADMIN_KEY, "POST", f"/admin/keys/{viewer['id']}/revoke").status_code == 200
    assert "Sign in" in _get(site, "/dashboard", cookies={"shipyard_dashboard": session}).text
    assert _get(site, "/dashboard/deployments/nope", key=ADMIN_KEY).status_code == 404
