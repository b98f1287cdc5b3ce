"""The review queue's page: the items waiting for a human, each with its prompt and answer, a claim
button, and (for the reviewer holding the claim) the label form. Plain HTML forms, no script."""

from __future__ import annotations

from html import escape

from shipyard.dashboard.data import Viewer
from shipyard.gateway.roles import Permission, allows

STYLE = ("<style>.item{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;margin:10px 0}"
         ".turn{white-space:pre-wrap;background:#f9fafb;border-left:3px solid #d1d5db;padding:4px 8px;margin:4px 0}"
         ".answer{border-left-color:#2563eb}textarea{width:100%;min-height:4em;box-sizing:border-box}"
         ".row{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:4px 0}</style>")


def _button(item_id: int, action: str, label: str) -> str:
    return (f'<form method=post action="/dashboard/review/{item_id}"><input type=hidden name=action value={action}>'
            f"<button type=submit>{label}</button></form>")


def _label_form(item_id: int) -> str:
    return (f'<form method=post action="/dashboard/review/{item_id}" class=label>'
            "<input type=hidden name=action value=label>"
            '<div class=row><b>Verdict</b><label><input type=radio name=verdict value=good required> good</label>'
            "<label><input type=radio name=verdict value=bad> bad</label></div>"
            '<label>Correction (the answer wanted; exported instead)<textarea name=correction></textarea></label>'
            "<label>Comment<textarea name=comment></textarea></label>"
            "<div class=row><button type=submit>Save label</button></div></form>")


def item_html(item: dict, viewer: Viewer, claim_lapsed: bool, names: dict[str, str] | None = None) -> str:
    turns = "".join(f'<div class=turn><b>{escape(m.get("role", ""))}</b>: {escape(str(m.get("content", "")))}</div>'
                    for m in item["messages"])
    mine = item["status"] == "claimed" and item["claimed_by"] == viewer.key_id and not claim_lapsed
    reviewer = (names or {}).get(item["claimed_by"], item["claimed_by"])  # who people know, not a key id
    status = item["status"] + (f' by {escape(reviewer)}' if item["status"] == "claimed" else "")
    actions = ""
    if mine:
        actions = _label_form(item["id"]) + '<div class=row>' + _button(item["id"], "release", "Release") + \
            _button(item["id"], "skip", "Skip") + "</div>"
    elif item["status"] == "pending" or claim_lapsed:
        actions = _button(item["id"], "claim", "Claim")
    tenant = f' · tenant {escape((names or {}).get(item["tenant_id"], item["tenant_id"]))}' if viewer.admin else ""
    return (f'<div class=item id="item-{item["id"]}"><div class=row><b>#{item["id"]}</b>'
            f'<span>{escape(item["deployment"])}{tenant}</span><span class=muted>{escape(item["reason"])}</span>'
            f'<span class=muted>{status}</span></div>{turns}'
            f'<div class="turn answer"><b>assistant</b>: {escape(item["answer"])}</div>{actions}</div>')


def review_page(items: list[tuple[dict, bool]], viewer: Viewer, error: str | None = None,
                names: dict[str, str] | None = None) -> str:
    if not allows(viewer.role, Permission.REVIEW):
        return "<p class=muted>Reviewing takes a tenant-admin or admin key.</p>"
    message = f"<p class=error role=alert>{escape(error)}</p>" if error else ""
    if not items:
        return STYLE + message + "<p class=muted>Nothing waits for review.</p>"
    return STYLE + message + "".join(item_html(item, viewer, lapsed, names) for item, lapsed in items) + \
        '<p><a href="/dashboard/review/export">Export labelled items (JSONL)</a></p>'
