"""`shipyard experiments create|status|pause|resume|promote|rollback`: the experiments admin API
from the command line (a running server, `--url`, and an admin key, `--key`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
import yaml

from shipyard.cli_admin import AS_JSON, KEY, URL, _call, _client, _show, console

experiments_app = typer.Typer(help="Shadow, canary, A/B and champion-challenger experiments.", no_args_is_help=True)
COLUMNS = ["name", "model", "mode", "status", "serving_weights", "version"]


@experiments_app.command("create")
def create(spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="the experiment as YAML or JSON"),
           url: Optional[str] = URL, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Create an experiment from a file ({name, model, mode, arms: [{name, deployment, weight}], ...})."""
    body = yaml.safe_load(spec.read_text())
    with _client(url, key) as client:
        _show(_call(client, "POST", "/admin/experiments", json=body).json(), COLUMNS, as_json)


@experiments_app.command("status")
def status(name: Optional[str] = typer.Argument(None, help="one experiment (default: list them all)"),
           url: Optional[str] = URL, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """The experiments, or one with its arms' traffic, sample-ratio check and audit log."""
    with _client(url, key) as client:
        if name is None:
            _show(_call(client, "GET", "/admin/experiments").json()["data"], COLUMNS, as_json)
            return
        view = _call(client, "GET", f"/admin/experiments/{name}").json()
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    _show(view, COLUMNS, False)
    ratio = view["sample_ratio"]
    console.print(f"requests per arm: {view['requests']}" + ("" if ratio is None else
                  f"  sample ratio p={ratio['p_value']:.3g}{'  [red]MISMATCH[/red]' if ratio['mismatch'] else ''}"))
    _show(view["events"], ["version", "kind", "actor", "created_at", "detail"], False)


def _action(action: str, name: str, url: Optional[str], key: Optional[str], as_json: bool, body: dict | None = None):
    with _client(url, key) as client:
        _show(_call(client, "POST", f"/admin/experiments/{name}/{action}", json=body).json(), COLUMNS, as_json)


@experiments_app.command("pause")
def pause(name: str, url: Optional[str] = URL, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Hold the split where it is: nothing moves automatically."""
    _action("pause", name, url, key, as_json)


@experiments_app.command("resume")
def resume(name: str, url: Optional[str] = URL, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    _action("resume", name, url, key, as_json)


@experiments_app.command("promote")
def promote(name: str, arm: Optional[str] = typer.Option(None, help="default: the first challenger"),
            url: Optional[str] = URL, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Send every request to the arm."""
    _action("promote", name, url, key, as_json, {"arm": arm} if arm else None)


@experiments_app.command("rollback")
def rollback(name: str, url: Optional[str] = URL, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Send every request back to the champion."""
    _action("rollback", name, url, key, as_json)
