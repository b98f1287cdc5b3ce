"""The dashboard in a real browser, as one scenario run inside a loopback-only network namespace
(Chromium phones home otherwise): start a server on the tiny model, make two tenants' traffic, then
sign in through the form as an admin and as each tenant's viewer and visit every page, collecting
console errors, dialogs, the charts on each page, its text, and a screenshot; then, as a tenant's
reviewer (tenant-admin), claim and label an item of the review queue through its page's forms.

    unshare -n sh -c 'ip link set lo up && exec python tests/dashboard/browse.py MODEL OUT_DIR'

Writes OUT_DIR/report.json (tests/dashboard/test_dashboard_browser.py asserts on it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from conftest import MODEL_NAME, ServerProcess, deployment  # noqa: E402
from gateway_support import ADMIN_KEY, AdminClient  # noqa: E402

PAGES = ("/dashboard", f"/dashboard/deployments/{MODEL_NAME}", "/dashboard/cost", "/dashboard/sla",
         "/dashboard/quality", "/dashboard/drift", "/dashboard/alerts", "/dashboard/review")
XSS_USER = "<img src=x onerror=alert(1)>"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def traffic(base: str, key: str, users: list[str]) -> None:
    with httpx.Client(timeout=60, headers={"authorization": f"Bearer {key}"}) as http:
        for user in users:
            response = http.post(f"{base}/v1/chat/completions", json={
                "model": MODEL_NAME, "max_tokens": 4, "user": user, "temperature": 0.7,
                "messages": [{"role": "user", "content": f"Tell me about the sea, {len(user)}"}]})
            assert response.status_code == 200, response.text


def visit(browser, base: str, key: str | None, out: Path, role: str) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors, dialogs = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    result = {"pages": {}}
    page.goto(f"{base}/dashboard")
    result["anonymous_text"] = page.inner_text("body")
    if key is not None:
        page.fill("input[name=api_key]", key)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/dashboard")
        cookies = {c["name"]: c for c in context.cookies()}
        result["cookie"] = {k: cookies["shipyard_dashboard"][k] for k in ("httpOnly", "sameSite", "path")}
        for path in PAGES:
            response = page.goto(f"{base}{path}")
            name = path.strip("/").replace("/", "_")
            page.screenshot(path=str(out / f"{role}-{name}.png"), full_page=True)
            result["pages"][path] = {"status": response.status, "charts": page.locator("svg.chart").count(),
                                     "series": page.locator("svg.chart .series").count(),
                                     "tables": page.locator("table").count(), "text": page.inner_text("body"),
                                     "html": page.content()}
    result["console_errors"], result["dialogs"] = errors, dialogs
    context.close()
    return result


def review(browser, base: str, key: str, out: Path) -> dict:
    """Sign in as a reviewer, claim the first item on the review page, label it through the form."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{base}/dashboard")
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard")
    page.goto(f"{base}/dashboard/review")
    before = {"text": page.inner_text("body"), "html": page.content(), "items": page.locator(".item").count(),
              "ids": [int(i.split("-")[1]) for i in page.locator(".item").evaluate_all("(els) => els.map(e => e.id)")]}
    item = page.locator(".item").first.get_attribute("id")
    page.click(f"#{item} button:has-text('Claim')")
    page.wait_for_selector(f"#{item} form.label")
    page.check(f"#{item} input[name=verdict][value=good]")
    page.fill(f"#{item} textarea[name=correction]", "A corrected answer <b>bold</b>")
    page.screenshot(path=str(out / "reviewer-review.png"), full_page=True)
    page.click(f"#{item} button:has-text('Save label')")
    page.wait_for_load_state()
    after = {"text": page.inner_text("body"), "items": page.locator(".item").count(),
             "labelled_still_listed": page.locator(f"#{item}").count()}
    context.close()
    return {"before": before, "after": after, "item": int(item.split("-")[1]), "console_errors": errors}


def main(model: str, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"deployments": {MODEL_NAME: deployment(Path(model))},
              "gateway": {"usage_flush_interval_s": 0.1, "prices": {"default": {"prompt": 1.0, "completion": 2.0}}},
              "cache": {"exact": {"enabled": False}},
              "monitor": {"evaluation_interval_s": 0.2,
                          "slos": [{"name": "chat", "deployment": MODEL_NAME, "ttft_ms": 5000}],
                          "alerts": {"rules": [{"name": "traffic-seen", "metric": "requests_per_s", "warning": 0.0,
                                                "window_s": 600}]},
                          "drift": {"deployments": [MODEL_NAME], "reference_size": 50, "current_size": 50,
                                    "min_current": 10, "evaluation_interval_s": 0.2}},
              "review": {"enabled": True, "sample": 1.0}}
    with ServerProcess(config, out, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as server:
        admin = AdminClient(server.base_url)
        tenants = {name: admin.tenant(name) for name in ("acme", "globex")}
        developers = {name: admin.key(t)["key"] for name, t in tenants.items()}
        viewers = {name: admin.key(t, role="viewer")["key"] for name, t in tenants.items()}
        reviewer = admin.key(tenants["acme"], role="tenant-admin")["key"]
        traffic(server.base_url, developers["acme"], ["alice-acme"] * 40 + [XSS_USER] * 2)
        traffic(server.base_url, developers["globex"], ["bob-globex"] * 30)
        time.sleep(2.0)  # usage flushed, rules and drift evaluated
        report = {"tenants": tenants, "roles": {}}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for role, key in (("admin", ADMIN_KEY), ("viewer-acme", viewers["acme"]),
                              ("viewer-globex", viewers["globex"]), ("anonymous", None)):
                report["roles"][role] = visit(browser, server.base_url, key, out, role)
            report["review"] = review(browser, server.base_url, reviewer, out)
            labelled = admin.get(f"/admin/review/{report['review']['item']}").json()
            report["review"]["stored"] = {k: labelled[k] for k in ("status", "labels", "correction", "tenant_id")}
            report["review"]["globex_ids"] = [i["id"] for i in admin.get(
                "/admin/review", params={"tenant_id": tenants["globex"], "limit": 500}).json()["data"]]
            browser.close()
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
