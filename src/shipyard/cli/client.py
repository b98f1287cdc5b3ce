"""The admin API's HTTP client for every command that talks to a running server: where the
server is (`--url`, `-c shipyard.yaml`, env SHIPYARD_URL), the key (`--key`, env SHIPYARD_API_KEY
or SHIPYARD_ADMIN_KEY), calls that print the server's error and exit non-zero, and tables."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shipyard.units import usd

# Piped (not a terminal), rich would assume 80 columns and squeeze the tables: give them room.
console = Console() if sys.stdout.isatty() else Console(width=200)

URL = typer.Option(None, "--url", help="Server URL (env SHIPYARD_URL, default http://127.0.0.1:8000)")
KEY = typer.Option(None, "--key", help="API key (env SHIPYARD_API_KEY or SHIPYARD_ADMIN_KEY)")
AS_JSON = typer.Option(False, "--json", help="Print JSON")
CONFIG = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                      help="shipyard.yaml: talk to the server it describes (server.host, server.port)")


def url_of(url: str | None, config: Path | None) -> str | None:
    """--url, else the server a --config describes (else SHIPYARD_URL, read later)."""
    if url or config is None:
        return url
    from shipyard.config import ShipyardConfig

    server = ShipyardConfig.load(config).server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{server.port}"


def server_of(url: str | None, key: str | None) -> tuple[str, dict[str, str]]:
    """The server's URL and the authorization header, from the options or the environment."""
    key = key or os.environ.get("SHIPYARD_API_KEY") or os.environ.get("SHIPYARD_ADMIN_KEY")
    if not key:
        raise typer.BadParameter("an API key is needed: --key, SHIPYARD_API_KEY or SHIPYARD_ADMIN_KEY")
    return url or os.environ.get("SHIPYARD_URL") or "http://127.0.0.1:8000", {"authorization": f"Bearer {key}"}


def open_client(url: str | None, key: str | None) -> httpx.Client:
    base, headers = server_of(url, key)
    return httpx.Client(base_url=base, headers=headers, timeout=30)


def call(client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {client.base_url}: {exc}[/red]")
        raise typer.Exit(2)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except Exception:
            message = response.text
        console.print(f"[red]{response.status_code}: {message}[/red]")
        raise typer.Exit(1)
    return response


def show(rows: list[dict] | dict, columns: list[str], as_json: bool) -> None:
    """A table, or JSON (an object for one item, a list for a listing)."""
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    rows = [rows] if isinstance(rows, dict) else rows
    table = Table()
    for column in columns:  # folded, never cut: an id or a cost is read whole at any width
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(c, row.get(c)) for c in columns])
    console.print(table)


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column.endswith("_usd") and isinstance(value, (int, float)):
        return usd(value)
    return str(value)


