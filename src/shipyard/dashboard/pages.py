"""The dashboard's HTML: one layout, one function per page, every dynamic value escaped."""

from __future__ import annotations

from html import escape

from shipyard.dashboard.charts import bar_chart, line_chart
from shipyard.dashboard.data import Viewer
from shipyard.units import usd

REFRESH_S = 30
NAV = (("Overview", "/dashboard"), ("Cost", "/dashboard/cost"), ("SLA", "/dashboard/sla"),
       ("Quality", "/dashboard/quality"), ("Drift", "/dashboard/drift"), ("Alerts", "/dashboard/alerts"),
       ("Review", "/dashboard/review"))
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#111827;background:#f3f4f6}
header{background:#111827;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}
header a{color:#d1d5db;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .who{margin-left:auto;color:#9ca3af}main{padding:16px 20px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:12px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;min-width:130px}
.card b{display:block;font-size:20px}.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{background:#fff;border:1px solid #e5e7eb;border-radius:8px;margin:0;padding:8px;max-width:100%;
box-sizing:border-box;flex:1 1 480px}svg.chart{display:block;max-width:100%;height:auto}
main{overflow-wrap:anywhere}table{max-width:100%;overflow-x:auto;display:block}
figcaption{font-weight:600;margin-bottom:4px}.legend .key{margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;background:#fff;margin:8px 0}td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:left}
.firing{color:#b91c1c;font-weight:600}.resolved{color:#15803d}.muted{color:#6b7280}
form.login{background:#fff;max-width:420px;margin:60px auto;padding:24px;border-radius:8px;border:1px solid #e5e7eb}
input[type=password]{width:100%;padding:8px;margin:8px 0;box-sizing:border-box}.error{color:#b91c1c}
"""


def layout(title: str, body: str, viewer: Viewer | None, active: str = "", refresh: bool = True) -> str:
    nav = ""
    if viewer is not None:
        links = "".join(f'<a href="{href}"{" class=on" if href == active else ""}>{name}</a>' for name, href in NAV)
        scope = "all tenants" if viewer.admin else f"tenant {escape(viewer.tenant_id)}"
        nav = (f"<header><strong>Shipyard</strong>{links}<span class=who>{escape(viewer.role)} · {scope}</span>"
               '<form method=post action="/dashboard/logout"><button>Sign out</button></form></header>')
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh and viewer is not None else ""
    return (f'<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)} · Shipyard</title>{meta}'
            f'<meta name=viewport content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
            f"<body>{nav}<main><h1>{escape(title)}</h1>{body}</main></body></html>")


def sign_in(error: str | None = None) -> str:
    message = f'<p class=error role=alert>{escape(error)}</p>' if error else ""
    body = ('<form class=login method=post action="/dashboard/login">'
            "<p>Sign in with an API key of role viewer, tenant-admin or admin.</p>"
            f'{message}<label>API key<input type=password name=api_key autocomplete=off required></label>'
            "<button type=submit>Sign in</button></form>")
    return layout("Sign in", body, None, refresh=False)


def _card(label: str, value: str) -> str:
    return f'<div class=card><span class=muted>{escape(label)}</span><b>{escape(value)}</b></div>'


def clock_span(start, end) -> tuple[str, str]:
    """A chart's first and last x as clock times (UTC), the day too when they span more than one."""
    pattern = "%H:%M UTC" if start.date() == end.date() else "%b %d %H:%M UTC"
    return start.strftime(pattern), end.strftime(pattern)


def budget_left(remaining: float) -> str:
    """An error budget's share left; spent past it, how many times over (never '−2930%')."""
    if remaining >= 0:
        return f"{remaining:.0%}"
    return f"none (spent {1 - remaining:.1f}×)"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def traffic_section(traffic: dict) -> str:
    totals, x = traffic["totals"], traffic["x"]
    cards = "".join([_card("Requests (1 h)", f"{totals['requests']:,}"),
                     _card("Server errors (5xx)", f"{totals['error_rate']:.2%}"),
                     _card("TTFT p95", _ms(totals["ttft_p95_ms"])), _card("Latency p95", _ms(totals["latency_p95_ms"])),
                     _card("Tokens", f"{totals['tokens']:,}"), _card("Cost", usd(totals["cost_usd"]))])
    span = clock_span(traffic["start"], traffic["end"])
    charts = [
        line_chart("Requests per minute", {"requests": list(zip(x, traffic["requests"]))}, x_labels=span),
        line_chart("Time to first token", {name: list(zip(x, values)) for name, values in traffic["ttft"].items()},
                   " ms", span),
        line_chart("Latency p95", {"p95": list(zip(x, traffic["latency_p95"]))}, " ms", span),
        line_chart("Server errors per minute", {"5xx": list(zip(x, traffic["errors"]))}, x_labels=span),
    ]
    note = '<p class=muted>Showing the newest 50,000 requests of the hour.</p>' if traffic["truncated"] else ""
    return f'<div class=cards>{cards}</div>{note}<div class=grid>{"".join(charts)}</div>'


def live_table(rows: list[dict], gpus: list[dict]) -> str:
    """Admins: each deployment's queue, running batch and KV cache now, and the GPUs."""
    body = "".join(f'<tr><td><a href="/dashboard/deployments/{escape(r["deployment"])}">{escape(r["deployment"])}'
                   f'</a></td><td>{r["waiting"]}</td><td>{r["running"]}</td><td>{r["kv_cache_usage"]:.1%}</td></tr>'
                   for r in rows)
    table = ("<h2>Engines now</h2><table><tr><th>deployment</th><th>queue</th><th>running</th><th>KV cache</th></tr>"
             f"{body}</table>")
    if gpus:
        table += ("<table><tr><th>GPU</th><th>memory used</th><th>utilization</th></tr>" + "".join(
            f'<tr><td>{g["index"]} {escape(g["name"])}</td><td>{g["memory_used_perc"]:.1%}</td>'
            f'<td>{g["utilization_perc"]:.0%}</td></tr>' for g in gpus) + "</table>")
    else:
        table += "<p class=muted>No GPU on this server.</p>"
    return table


def deployment_links(names: list[str]) -> str:
    links = " · ".join(f'<a href="/dashboard/deployments/{escape(n)}">{escape(n)}</a>' for n in names)
    return f"<p>Deployments: {links}</p>"


def budgets_table(budgets: list[dict]) -> str:
    """Each budget in the viewer's view: whose, its period, spent so far in it, and what is left."""
    if not budgets:
        return "<h2>Budgets</h2><p class=muted>No budget is set (a tenant's or a key's budget_usd).</p>"
    rows = "".join(f'<tr><td>{escape(b["whose"])}</td><td>{escape(b["name"])}</td><td>{usd(b["budget_usd"])}'
                   f' a {escape(b["period"])}</td><td>{usd(b["spent_usd"])}</td>'
                   f'<td class="{"firing" if b["spent_usd"] >= b["budget_usd"] else ""}">'
                   f'{usd(max(0.0, b["budget_usd"] - b["spent_usd"]))}</td></tr>' for b in budgets)
    return ("<h2>Budgets</h2><table><tr><th>scope</th><th>name</th><th>budget</th><th>spent this period</th>"
            f"<th>left</th></tr>{rows}</table>")


def cost_page(by_key: list[dict], by_user: list[dict], by_tenant: list[dict] | None,
              names: dict[str, str] | None = None, budgets: list[dict] | None = None) -> str:
    """`names`: tenant and key ids → what people call them (shown instead of the ids)."""
    names = names or {}
    parts = []
    if by_tenant is not None:
        parts.append(bar_chart("Cost per tenant (30 days)",
                               [(names.get(r["tenant_id"], r["tenant_id"]), r["cost_usd"]) for r in by_tenant], fmt=usd))
    parts.append(bar_chart("Cost per key (30 days)",
                           [(names.get(r["key_id"], r["key_id"]), r["cost_usd"]) for r in by_key], fmt=usd))
    parts.append(bar_chart("Cost per end user (30 days)",
                           [(r["user"] or "(no user)", r["cost_usd"]) for r in by_user], fmt=usd))
    rows = "".join(f'<tr><td>{escape(r["user"] or "(no user)")}</td><td>{r["requests"]}</td>'
                   f'<td>{r["prompt_tokens"] + r["completion_tokens"]}</td><td>{usd(r["cost_usd"])}</td></tr>'
                   for r in sorted(by_user, key=lambda r: -r["cost_usd"])[:50])
    table = ("<table><tr><th>user</th><th>requests</th><th>tokens</th><th>cost</th></tr>" + rows + "</table>")
    return (budgets_table(budgets or []) + f'<div class=grid>{"".join(parts)}</div><h2>Per end user</h2>{table}')


def sla_page(reports: list[dict]) -> str:
    if not reports:
        return "<p class=muted>No SLOs are declared (monitor.slos in shipyard.yaml).</p>"
    parts = []
    for report in reports:
        met = "met" if report["met"] else "missed"
        compliance = "—" if report["compliance"] is None else f"{report['compliance']:.3%}"
        cards = (_card("Objective", f"{report['objective']:.2%}") + _card("Compliance", compliance)
                 + _card("Error budget left", budget_left(report["error_budget_remaining"]))
                 + _card("Requests", f"{report['requests']:,}"))
        parts.append(f'<h2>{escape(report["slo"])} <span class="{"resolved" if report["met"] else "firing"}">'
                     f"{met}</span></h2><div class=cards>{cards}</div>")
        days = [(p["date"], p["compliance"] * 100) for p in report["periods"] if p["compliance"] is not None]
        parts.append(bar_chart("Compliance per day (%)", days[-14:], " %"))
        if "burn_rates" in report:
            rows = "".join(f'<tr><td>{b["window"]}</td><td>{b["severity"]}</td><td>{b["long_burn_rate"]:.2f}</td>'
                           f'<td>{b["short_burn_rate"]:.2f}</td><td>{b["factor"]}</td>'
                           f'<td class="{"firing" if b["alerting"] else "resolved"}">'
                           f'{"alerting" if b["alerting"] else "ok"}</td></tr>' for b in report["burn_rates"])
            parts.append("<table><tr><th>windows</th><th>severity</th><th>burn (long)</th><th>burn (short)</th>"
                         f"<th>threshold</th><th>state</th></tr>{rows}</table>")
    return "".join(parts)


def quality_page(series: dict[str, dict]) -> str:
    if not series:
        return "<p class=muted>No scores in the last 24 hours.</p>"
    charts, rows = [], []
    for name, data in series.items():
        charts.append(line_chart(f"{name} (hourly mean)", {name: list(zip(data["x"], data["mean"]))},
                                 x_labels=clock_span(data["start"], data["end"])))
        latest = "—" if data["latest"] is None else f"{data['latest']:.4g}"
        rows.append(f"<tr><td>{escape(name)}</td><td>{data['count']}</td><td>{latest}</td></tr>")
    table = "<table><tr><th>score</th><th>rows (24 h)</th><th>latest hourly mean</th></tr>" + "".join(rows) + "</table>"
    return table + f'<div class=grid>{"".join(charts)}</div>'


def drift_page(statuses: list[dict] | None) -> str:
    if statuses is None:
        return ("<p class=muted>Drift is measured over every tenant's traffic of a deployment, so only admins "
                "see it.</p>")
    if not statuses:
        return "<p class=muted>No deployment's drift is watched (monitor.drift.deployments).</p>"
    parts = []
    for status in statuses:
        report = status["report"]
        parts.append(f'<h2>{escape(status["deployment"])}</h2><p>reference {status["reference_rows"]} requests, '
                     f'current {status["current_rows"]}</p>')
        if report is None:
            parts.append("<p class=muted>Not compared yet (the windows are filling).</p>")
            continue
        for side in ("input", "output"):
            data = report[side]
            state = "drifted" if data["drifted"] else "stable"
            parts.append(f'<h3>{side}: <span class="{"firing" if data["drifted"] else "resolved"}">{state}</span>'
                         f' (drifted share {data["drift_share"]:.2f})</h3>')
            rows = "".join(f'<tr><td>{escape(f["feature"])}</td><td>{f["test"]}</td><td>{f["statistic"]:.4g}</td>'
                           f'<td>{f["threshold"]}</td><td>{"yes" if f["drifted"] else "no"}</td></tr>'
                           for f in data["features"] + ([data["embedding"]] if data["embedding"] else []))
            parts.append("<table><tr><th>feature</th><th>test</th><th>statistic</th><th>threshold</th>"
                         f"<th>drifted</th></tr>{rows}</table>")
        novel = report["new_patterns"]
        parts.append(bar_chart("Drift now (shares, 0 to 1)", [("input: drifted descriptors", report["input"]["drift_share"]),
                                                              ("output: drifted descriptors", report["output"]["drift_share"]),
                                                              ("new-pattern requests", novel["share"])]))
        parts.append(f"<p>New patterns: {novel['share']:.0%} of the latest {novel['recent']} requests fit no "
                     "reference cluster.</p>")
    return "".join(parts)


def alerts_page(active: list[dict], history: list[dict]) -> str:
    def rows(events):
        return "".join(f'<tr><td class="{e["status"]}">{e["status"]}</td><td>{escape(e["alertname"])}</td>'
                       f'<td>{escape(e["severity"])}</td><td>{escape(e["deployment"] or "")}</td>'
                       f'<td>{escape(e["annotations"].get("summary", ""))}</td><td>{escape(e["starts_at"])}</td>'
                       f'<td>{escape(e["ends_at"] or "")}</td></tr>' for e in events)

    head = ("<tr><th>status</th><th>alert</th><th>severity</th><th>deployment</th><th>summary</th><th>since</th>"
            "<th>until</th></tr>")
    firing = f"<table>{head}{rows(active)}</table>" if active else "<p class=muted>Nothing is firing.</p>"
    past = f"<table>{head}{rows(history)}</table>" if history else "<p class=muted>No alerts yet.</p>"
    return f"<h2>Firing</h2>{firing}<h2>History</h2>{past}"
