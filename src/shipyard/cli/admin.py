"""`shipyard keys|tenants|usage`: tenants, keys and usage through the admin API. A new key's
secret is printed once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from shipyard.cli.client import AS_JSON, CONFIG, KEY, URL, call, console, open_client, show, url_of

keys_app = typer.Typer(help="Create, list, rotate and revoke API keys.", no_args_is_help=True)
tenants_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)


def _limits(rpm, tpm, max_concurrent, budget_usd, budget_period) -> dict:
    values = {"rpm": rpm, "tpm": tpm, "max_concurrent": max_concurrent, "budget_usd": budget_usd,
              "budget_period": budget_period}
    return {k: v for k, v in values.items() if v is not None}


@tenants_app.command("create")
def tenants_create(name: str, rpm: Optional[int] = None, tpm: Optional[int] = None,
                   max_concurrent: Optional[int] = None, budget_usd: Optional[float] = None,
                   budget_period: Optional[str] = None,
                   max_tier: int = typer.Option(0, help="Highest key tier a tenant-admin may give"),
                   url: Optional[str] = URL,
                   config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON):
    """Create a tenant (admin only)."""
    url = url_of(url, config)
    with open_client(url, key) as client:
        body = {"name": name, "max_tier": max_tier, **_limits(rpm, tpm, max_concurrent, budget_usd, budget_period)}
        show(call(client, "POST", "/admin/tenants", json=body).json(), ["id", "name", "rpm", "tpm"], as_json)


@tenants_app.command("list")
def tenants_list(url: Optional[str] = URL,
                 config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON):
    """List tenants (yours only, unless admin)."""
    url = url_of(url, config)
    with open_client(url, key) as client:
        show(call(client, "GET", "/admin/tenants").json()["data"], ["id", "name", "rpm", "tpm", "budget_usd"],
              as_json)


KEY_COLUMNS = ["id", "tenant_id", "name", "role", "tier", "rpm", "tpm", "expires_at", "revoked_at", "rotation_due"]


@keys_app.command("create")
def keys_create(tenant: Optional[str] = typer.Option(None, help="Tenant id (default: yours)"),
                role: str = typer.Option("developer", help="admin, tenant-admin, developer, viewer, metrics"),
                name: str = "", tier: int = 0, expires_in_s: Optional[float] = None,
                allowed_model: Optional[list[str]] = typer.Option(None, help="Repeat to allow several"),
                rotation_period_days: Optional[int] = None, rpm: Optional[int] = None, tpm: Optional[int] = None,
                max_concurrent: Optional[int] = None, budget_usd: Optional[float] = None,
                budget_period: Optional[str] = None, url: Optional[str] = URL,
                config: Optional[Path] = CONFIG, key: Optional[str] = KEY,
                as_json: bool = AS_JSON):
    """Create a key; its secret is printed once."""
    url = url_of(url, config)
    body = {"tenant_id": tenant, "role": role, "name": name, "tier": tier, "expires_in_s": expires_in_s,
            "allowed_models": allowed_model or None, "rotation_period_days": rotation_period_days,
            **_limits(rpm, tpm, max_concurrent, budget_usd, budget_period)}
    with open_client(url, key) as client:
        created = call(client, "POST", "/admin/keys", json=body).json()
    _print_secret(created, as_json)


def _print_secret(created: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(created, indent=2, default=str))
        return
    show(created, KEY_COLUMNS[:5], False)
    console.print("[bold]Key (shown once, store it now):[/bold]")
    sys.stdout.write(created["key"] + "\n")


@keys_app.command("list")
def keys_list(tenant: Optional[str] = None, url: Optional[str] = URL,
              config: Optional[Path] = CONFIG, key: Optional[str] = KEY,
              as_json: bool = AS_JSON):
    """List keys (never their secrets)."""
    url = url_of(url, config)
    with open_client(url, key) as client:
        params = {"tenant_id": tenant} if tenant else {}
        show(call(client, "GET", "/admin/keys", params=params).json()["data"], KEY_COLUMNS, as_json)


@keys_app.command("show")
def keysshow(key_id: str, url: Optional[str] = URL,
              config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON):
    """Show one key."""
    url = url_of(url, config)
    with open_client(url, key) as client:
        show(call(client, "GET", f"/admin/keys/{key_id}").json(), KEY_COLUMNS, as_json)


@keys_app.command("rotate")
def keys_rotate(key_id: str,
                grace_period_s: Optional[float] = typer.Option(
                    None, help="Old secret keeps working this long (default: the key's own grace policy)"),
                url: Optional[str] = URL,
                config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON):
    """Issue a new secret for a key; the old one works for the grace period."""
    url = url_of(url, config)
    body = {} if grace_period_s is None else {"grace_period_s": grace_period_s}
    with open_client(url, key) as client:
        rotated = call(client, "POST", f"/admin/keys/{key_id}/rotate", json=body).json()
    _print_secret(rotated, as_json)


@keys_app.command("revoke")
def keys_revoke(key_id: str, url: Optional[str] = URL,
                config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON):
    """Revoke a key, at once, on every replica."""
    url = url_of(url, config)
    with open_client(url, key) as client:
        show(call(client, "POST", f"/admin/keys/{key_id}/revoke").json(), KEY_COLUMNS, as_json)


def usage(tenant: Optional[str] = None, key_id: Optional[str] = typer.Option(None, "--key-id"),
          model: Optional[str] = None, start: Optional[str] = typer.Option(None, help="ISO 8601"),
          end: Optional[str] = typer.Option(None, help="ISO 8601"),
          group_by: Optional[list[str]] = typer.Option(None, help="tenant_id, key_id, model (repeat)"),
          csv: bool = typer.Option(False, "--csv", help="CSV instead of a table"),
          url: Optional[str] = URL, config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON):
    """Usage totals by tenant, key and model over a time range."""
    url = url_of(url, config)
    params = {k: v for k, v in {"tenant_id": tenant, "key_id": key_id, "model": model, "start": start,
                                "end": end}.items() if v}
    if group_by:
        params["group_by"] = group_by
    with open_client(url, key) as client:
        if csv:
            sys.stdout.write(call(client, "GET", "/admin/usage", params={**params, "format": "csv"}).text)
            return
        rows = call(client, "GET", "/admin/usage", params=params).json()["data"]
    columns = [*(group_by or ["tenant_id", "key_id", "model"]), "requests", "prompt_tokens", "completion_tokens",
               "cost_usd"]
    show(rows, columns, as_json)
