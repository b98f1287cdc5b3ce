"""The dashboard in headless Chromium (Playwright, Debian's /usr/bin/chromium), in a loopback-only
network namespace: every page renders with data and charts and without console errors; a viewer of
tenant A sees no tenant B data; a client-supplied name cannot run script; a screenshot of each
page is saved (test-artifacts/dashboard/)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODEL_NAME

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
PAGES = ("/dashboard", f"/dashboard/deployments/{MODEL_NAME}", "/dashboard/cost", "/dashboard/sla",
         "/dashboard/quality", "/dashboard/drift", "/dashboard/alerts", "/dashboard/review")


@pytest.fixture(scope="module")
def report(tiny_model):
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Chromium is missing: `make system-deps` installs it")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    script = ROOT / "tests" / "dashboard" / "browse.py"
    run = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
                          str(script), str(tiny_model), str(ARTIFACTS)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return json.loads((ARTIFACTS / "report.json").read_text())


def test_every_page_renders_with_charts_and_no_console_errors(report):
    for role in ("admin", "viewer-acme", "viewer-globex"):
        seen = report["roles"][role]
        assert seen["console_errors"] == [] and seen["dialogs"] == [], (role, seen["console_errors"])
        assert seen["cookie"] == {"httpOnly": True, "sameSite": "Strict", "path": "/dashboard"}
        for path in PAGES:
            page = seen["pages"][path]
            assert page["status"] == 200, (role, path)
            assert (ARTIFACTS / f"{role}-{path.strip('/').replace('/', '_')}.png").stat().st_size > 1000
    admin = report["roles"]["admin"]["pages"]
    for path in PAGES[:-1]:
        assert admin[path]["charts"] + admin[path]["tables"] > 0, path
    for path in ("/dashboard", "/dashboard/cost", "/dashboard/sla", "/dashboard/quality"):
        assert admin[path]["charts"] > 0 and admin[path]["series"] > 0, path  # charts with data drawn
    assert "alice-acme" in admin["/dashboard/cost"]["text"] and "bob-globex" in admin["/dashboard/cost"]["text"]
    assert "mean_logprob" in admin["/dashboard/quality"]["text"]
    assert "traffic-seen" in admin["/dashboard/alerts"]["text"]
    assert "prompt_symbol_share" in admin["/dashboard/drift"]["text"]
    assert "Engines now" in admin["/dashboard"]["text"]


def test_a_tenant_viewer_sees_only_its_own_tenant(report):
    tenants = report["tenants"]
    acme = report["roles"]["viewer-acme"]["pages"]
    globex = report["roles"]["viewer-globex"]["pages"]
    assert "alice-acme" in acme["/dashboard/cost"]["text"] and "bob-globex" in globex["/dashboard/cost"]["text"]
    for path in PAGES:
        assert "bob-globex" not in acme[path]["html"] and tenants["globex"] not in acme[path]["html"], path
        assert "alice-acme" not in globex[path]["html"] and tenants["acme"] not in globex[path]["html"], path
    assert "only admins" in acme["/dashboard/drift"]["text"]  # drift is global: not a tenant's to read
    assert "traffic-seen" not in acme["/dashboard/alerts"]["text"]  # nor are global alerts
    assert "Engines now" not in acme["/dashboard"]["text"]


def test_anonymous_callers_get_the_sign_in_page_and_names_are_escaped(report):
    anonymous = report["roles"]["anonymous"]
    assert "Sign in" in anonymous["anonymous_text"] and "alice" not in anonymous["anonymous_text"]
    cost = report["roles"]["viewer-acme"]["pages"]["/dashboard/cost"]
    assert "<img src=x onerror=alert(1)>" in cost["text"]  # shown as text
    assert "&lt;img src=x" in cost["html"]


def test_a_reviewer_claims_and_labels_through_the_review_page(report):
    review, tenants = report["review"], report["tenants"]
    assert review["console_errors"] == []
    assert review["before"]["items"] > 0 and "Tell me about the sea" in review["before"]["text"]
    assert review["globex_ids"] and not set(review["before"]["ids"]) & set(review["globex_ids"])  # only its own
    assert review["after"]["labelled_still_listed"] == 0  # labelled: off the queue
    assert review["stored"] == {"status": "labelled", "labels": {"verdict": "good"},
                                "correction": "A corrected answer <b>bold</b>", "tenant_id": tenants["acme"]}
    viewer = report["roles"]["viewer-acme"]["pages"]["/dashboard/review"]
    assert "tenant-admin or admin" in viewer["text"] and "Tell me about the sea" not in viewer["text"]
    admin = report["roles"]["admin"]["pages"]["/dashboard/review"]
    assert "Claim" in admin["text"] and f"({tenants['acme']})" in admin["text"]  # admins see whose it is, by name
