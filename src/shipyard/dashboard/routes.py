"""`/dashboard`: pages for operators and tenants.

Access: `Authorization: Bearer <key>` or the session cookie the sign-in form sets
(dashboard/session.py); a key of role viewer, tenant-admin or admin. An anonymous caller gets the
sign-in page and no data; another role gets 403. A tenant's viewer sees its own tenant's traffic,
cost, SLA, scores and alerts; admins see every tenant, live engine state and drift.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from shipyard.api.authorization import bearer_token, services_of
from shipyard.api.admin.review import ItemId
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.dashboard import data, pages
from shipyard.dashboard.review_page import review_page
from shipyard.dashboard.session import COOKIE, SESSION_S, may_view
from shipyard.experiments.review_items import LabelIn, ReviewError, ReviewItems, item_view
from shipyard.gateway.errors import GatewayError
from shipyard.gateway.roles import Permission, allows
from shipyard.gateway.usage_report import usage_totals
from shipyard.monitor.gpu import gpu_stats
from shipyard.monitor.scores import UnknownRequest

router = APIRouter(route_class=StrictJSONRoute, prefix="/dashboard", include_in_schema=False)

HEADERS = {
    # No script runs on these pages; styles are inline; charts are inline SVG.
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on the pages' own
    # form posts, and the forms' origin check could not tell them from a sandboxed attacker's
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


class Refused(Exception):
    def __init__(self, response: Response):
        self.response = response


async def viewer_of(request: Request) -> data.Viewer:
    """The caller, or a refusal page: sign-in for no (or a bad) credential, 403 for a role without
    read access."""
    services = services_of(request)
    token = bearer_token(request)
    if token is None and request.app.state.config.auth != "enabled":
        return data.Viewer("local", "system", "admin")  # auth disabled: a local, single-user server
    if token is not None:
        try:
            principal = await services.gateway.authenticate(token)
        except GatewayError:
            raise Refused(_html(pages.sign_in("That API key is not valid."), 401)) from None
        viewer = data.Viewer(principal.key_id, principal.tenant_id, principal.role)
    else:
        viewer = await request.app.state.dashboard_sessions.viewer(request.cookies.get(COOKIE))
        if viewer is None:
            raise Refused(_html(pages.sign_in()))
    if not may_view(viewer.role):
        raise Refused(_html(pages.layout("Not allowed", f"<p>The role '{viewer.role}' may not read usage; "
                                          "use a viewer, tenant-admin or admin key.</p>", None), 403))
    return viewer


async def refused(request: Request, exc: Refused) -> Response:
    """The app's handler for `Refused` (installed with the routes): the page, not a JSON error."""
    return exc.response


@router.get("/login")
async def login_form():
    return _html(pages.sign_in())


MAX_LOGIN_BYTES = 4096
MAX_REVIEW_FORM_BYTES = 100_000


def cross_site(request: Request) -> bool:
    """A form posted from another origin (another site, or another port of this host): a browser
    names it in `Origin` (and `Sec-Fetch-Site`). The forms act with the session cookie, so only
    this server's own pages may post them. A client with no such headers is no browser, and
    carries no victim's cookie."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:  # every current browser sends it: the browser's own word
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == "null" or urlsplit(origin).netloc.lower() != (request.headers.get("host") or "").lower()
    return False


async def bounded_form(request: Request, limit: int) -> dict[str, str] | None:
    """The posted form, or None past `limit` bytes: read no further than that, whatever the body's
    declared length (an unauthenticated sender must not make the server hold megabytes)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            return None
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


@router.post("/login")
async def login(request: Request):
    if cross_site(request):
        return _html(pages.sign_in("Sign in from this server's own page."), 403)
    form = await bounded_form(request, MAX_LOGIN_BYTES)
    if form is None:
        return _html(pages.sign_in("That form is too large."), 413)
    key = form.get("api_key", "").strip()
    try:
        principal = await services_of(request).gateway.authenticate(key or None)
    except GatewayError:
        return _html(pages.sign_in("That API key is not valid."), 401)
    if not may_view(principal.role):
        return _html(pages.sign_in(f"The role '{principal.role}' may not read the dashboard."), 403)
    response = RedirectResponse("/dashboard", status_code=303, headers=HEADERS)
    response.set_cookie(COOKIE, request.app.state.dashboard_sessions.issue(principal.key_id, principal.generation),
                        max_age=SESSION_S, path="/dashboard", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request):
    if cross_site(request):
        return _html(pages.sign_in("Sign out from this server's own page."), 403)
    await request.app.state.dashboard_sessions.revoke(request.cookies.get(COOKIE))
    response = RedirectResponse("/dashboard/login", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


async def _live(request: Request) -> str:
    engines = services_of(request).router.engines()
    rows = []
    for name, engine in sorted(engines.items()):
        stats = engine.stats()
        rows.append({"deployment": name, "waiting": stats.num_waiting, "running": stats.num_running,
                     "kv_cache_usage": stats.kv_cache_usage})
    return pages.live_table(rows, await asyncio.to_thread(gpu_stats))


@router.get("")
async def overview(request: Request, viewer: data.Viewer = Depends(viewer_of)):
    services = services_of(request)
    traffic = await data.traffic(services.db, viewer.scope)
    body = pages.traffic_section(traffic) + pages.deployment_links(sorted(services.router.engines()))
    if viewer.admin:
        body += await _live(request)
    return _html(pages.layout("Overview", body, viewer, "/dashboard"))


@router.get("/deployments/{name}")
async def deployment(request: Request, name: str, viewer: data.Viewer = Depends(viewer_of)):
    services = services_of(request)
    if name not in services.router.engines():
        return _html(pages.layout("Not found", "<p>No such deployment.</p>", viewer), 404)
    traffic = await data.traffic(services.db, viewer.scope, name)
    quality = await data.score_series(services.db, viewer.scope, deployment=name)
    body = pages.traffic_section(traffic) + "<h2>Scores</h2>" + pages.quality_page(quality)
    return _html(pages.layout(f"Deployment {name}", body, viewer, "/dashboard"))


@router.get("/cost")
async def cost(request: Request, viewer: data.Viewer = Depends(viewer_of)):
    db = services_of(request).db
    since = datetime.now(timezone.utc) - timedelta(days=30)
    by_key = await usage_totals(db, ["key_id"], viewer.scope, start=since)
    by_user = await usage_totals(db, ["user"], viewer.scope, start=since)
    by_tenant = await usage_totals(db, ["tenant_id"], start=since) if viewer.admin else None
    tenants, keys, names = await data.owners(services_of(request).keystore, viewer.scope)
    in_view = await data.budgets(db, viewer.scope, tenants, keys, names)
    body = pages.cost_page(by_key, by_user, by_tenant, names, in_view)
    return _html(pages.layout("Cost and usage", body, viewer, "/dashboard/cost"))


@router.get("/sla")
async def sla(request: Request, viewer: data.Viewer = Depends(viewer_of)):
    monitor = services_of(request).monitor
    reports = []
    if monitor is not None:
        for slo in monitor.sla.slos.values():
            report = await monitor.sla.compliance(slo, viewer.scope)
            if viewer.admin:
                report["burn_rates"] = await monitor.sla.burn_rates(slo)
            reports.append(report)
    return _html(pages.layout("SLA", pages.sla_page(reports), viewer, "/dashboard/sla"))


@router.get("/quality")
async def quality(request: Request, viewer: data.Viewer = Depends(viewer_of)):
    series = await data.score_series(services_of(request).db, viewer.scope)
    body = pages.quality_page(series)
    return _html(pages.layout("Quality and hallucination", body, viewer, "/dashboard/quality"))


@router.get("/drift")
async def drift(request: Request, viewer: data.Viewer = Depends(viewer_of)):
    monitor = services_of(request).monitor
    statuses = None
    if viewer.admin:
        watcher = monitor.drift if monitor is not None else None
        statuses = [watcher.status(name) for name in watcher.settings.deployments] if watcher is not None else []
    return _html(pages.layout("Drift and new patterns", pages.drift_page(statuses), viewer, "/dashboard/drift"))


@router.get("/alerts")
async def alerts(request: Request, viewer: data.Viewer = Depends(viewer_of)):
    monitor = services_of(request).monitor
    active, history = [], []
    if monitor is not None:
        only = not viewer.admin
        active = await monitor.store.active(viewer.scope, only)
        history = await monitor.store.history(viewer.scope, only, limit=200)
        if not viewer.admin:  # global alerts are not a tenant's; its own objectives are
            active += await _missed_objectives(monitor, viewer.tenant_id)
    return _html(pages.layout("Alerts", pages.alerts_page(active, history), viewer, "/dashboard/alerts"))


async def _missed_objectives(monitor, tenant: str) -> list[dict]:
    """The SLOs the tenant's own traffic misses now, as firing rows: a tenant viewer must not read
    "Nothing is firing" while its service is below its objective."""
    missed = []
    for slo in monitor.sla.slos.values():
        report = await monitor.sla.compliance(slo, tenant)
        if report["compliance"] is not None and not report["met"]:
            missed.append({"status": "firing", "alertname": f"SLOMissed:{report['slo']}", "severity": "warning",
                           "deployment": slo.deployment, "starts_at": "this period", "ends_at": None,
                           "annotations": {"summary": f"compliance {report['compliance']:.2%} is below the objective "
                                                      f"{report['objective']:.2%} for this tenant"}})
    return missed


def _review_items(request: Request) -> ReviewItems:
    return ReviewItems(services_of(request).db, request.app.state.config.review.claim_ttl_s)


async def _review_html(request: Request, viewer: data.Viewer, error: str | None = None, status: int = 200):
    items = []
    if allows(viewer.role, Permission.REVIEW):
        store = _review_items(request)
        claimed = await store.list(viewer.scope, "claimed", limit=25)
        mine = [r for r in claimed if r.claimed_by == viewer.key_id]  # the reviewer's own work first
        rows = mine + await store.list(viewer.scope, "pending", limit=25) + [r for r in claimed if r not in mine]
        now = datetime.now(timezone.utc)
        items = [(item_view(r), r.status == "claimed" and store.claim_lapsed(r, now)) for r in rows]
    names = (await data.owners(services_of(request).keystore, viewer.scope))[2] if items else {}
    page = pages.layout("Review queue", review_page(items, viewer, error, names), viewer, "/dashboard/review",
                        refresh=False)
    return _html(page, status)


@router.get("/review")
async def review(request: Request, viewer: data.Viewer = Depends(viewer_of)):
    return await _review_html(request, viewer)


@router.get("/review/export")
async def review_export(request: Request, viewer: data.Viewer = Depends(viewer_of)):
    """The labelled items as fine-tuning JSONL, for a signed-in reviewer (the admin API's export
    takes an API key in a header, which a link from this page cannot send)."""
    if not allows(viewer.role, Permission.REVIEW):
        return await _review_html(request, viewer, status=403)
    lines = _review_items(request).export(viewer.scope)
    return StreamingResponse(lines, media_type="application/jsonl",
                             headers={**HEADERS, "content-disposition": 'attachment; filename="review.jsonl"'})


@router.post("/review/{item_id}")
async def review_action(request: Request, item_id: ItemId, viewer: data.Viewer = Depends(viewer_of)):
    """The page's forms: claim, release, skip, label. Same rules as the admin API (review_items.py)."""
    if not allows(viewer.role, Permission.REVIEW):
        return await _review_html(request, viewer, status=403)
    if cross_site(request):
        return await _review_html(request, viewer, "Forms are taken from this server's own pages only.", 403)
    form = await bounded_form(request, MAX_REVIEW_FORM_BYTES)
    if form is None:
        return await _review_html(request, viewer, "That form is too large: texts are at most 20,000 characters.", 413)
    action, store = form.get("action"), _review_items(request)
    try:
        if action == "label":
            body = LabelIn(verdict=form.get("verdict", ""), correction=form.get("correction", "").strip() or None,
                           comment=form.get("comment", "").strip() or None)
            await store.label(item_id, viewer.scope, viewer.key_id, body)
        elif action in ("claim", "release", "skip"):
            await getattr(store, action)(item_id, viewer.scope, viewer.key_id)
        else:
            return await _review_html(request, viewer, "Unknown action.", 400)
    except ReviewError as exc:
        return await _review_html(request, viewer, str(exc), exc.status)
    except UnknownRequest:
        return await _review_html(request, viewer, "The reviewed response's record is gone.", 404)
    except ValueError:  # the form's verdict or texts out of bounds
        return await _review_html(request, viewer, "Choose a verdict (good or bad); texts are at most 20,000 "
                                  "characters.", 400)
    return RedirectResponse(f"/dashboard/review#item-{item_id}", status_code=303, headers=HEADERS)
