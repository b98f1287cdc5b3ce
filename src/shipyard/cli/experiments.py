"""`shipyard experiments create|status|pause|resume|promote|rollback|report|replay`: the
experiments admin API from the command line (a running server, `--url`, and an admin key, `--key`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.table import Table

from shipyard.cli.client import AS_JSON, CONFIG, KEY, URL, call, console, open_client, show, url_of

experiments_app = typer.Typer(help="Shadow, canary, A/B and champion-challenger experiments.", no_args_is_help=True)
COLUMNS = ["name", "model", "mode", "status", "serving_weights", "version"]


@experiments_app.command("create")
def create(spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="the experiment as YAML or JSON"),
           url: Optional[str] = URL,
           config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Create an experiment from a file ({name, model, mode, arms: [{name, deployment, weight}], ...})."""
    url = url_of(url, config)
    body = yaml.safe_load(spec.read_text())
    with open_client(url, key) as client:
        show(call(client, "POST", "/admin/experiments", json=body).json(), COLUMNS, as_json)


@experiments_app.command("status")
def status(name: Optional[str] = typer.Argument(None, help="one experiment (default: list them all)"),
           url: Optional[str] = URL,
           config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """The experiments, or one with its arms' traffic, sample-ratio check and audit log."""
    url = url_of(url, config)
    with open_client(url, key) as client:
        if name is None:
            show(call(client, "GET", "/admin/experiments").json()["data"], COLUMNS, as_json)
            return
        view = call(client, "GET", f"/admin/experiments/{name}").json()
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    show(view, COLUMNS, False)
    ratio = view["sample_ratio"]
    console.print(f"requests per arm: {view['requests']}" + ("" if ratio is None else
                  f"  sample ratio p={ratio['p_value']:.3g}{'  [red]MISMATCH[/red]' if ratio['mismatch'] else ''}"))
    show(view["events"], ["version", "kind", "actor", "created_at", "detail"], False)


def _action(action: str, name: str, url: Optional[str], key: Optional[str], as_json: bool, body: dict | None = None):
    with open_client(url, key) as client:
        show(call(client, "POST", f"/admin/experiments/{name}/{action}", json=body).json(), COLUMNS, as_json)


@experiments_app.command("pause")
def pause(name: str, url: Optional[str] = URL,
          config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Hold the split where it is: nothing moves automatically."""
    url = url_of(url, config)
    _action("pause", name, url, key, as_json)


@experiments_app.command("resume")
def resume(name: str, url: Optional[str] = URL,
           config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    url = url_of(url, config)
    _action("resume", name, url, key, as_json)


@experiments_app.command("promote")
def promote(name: str, arm: Optional[str] = typer.Option(None, help="default: the first challenger"),
            url: Optional[str] = URL,
            config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Send every request to the arm."""
    url = url_of(url, config)
    _action("promote", name, url, key, as_json, {"arm": arm} if arm else None)


@experiments_app.command("rollback")
def rollback(name: str, url: Optional[str] = URL,
             config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Send every request back to the champion."""
    url = url_of(url, config)
    _action("rollback", name, url, key, as_json)


@experiments_app.command("report")
def report(name: str, alpha: float = typer.Option(0.05, help="the tests' error rate"),
           min_samples: int = typer.Option(100, help="per arm (or pairs) before any decision"),
           url: Optional[str] = URL,
           config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """The decision report: each metric's always-valid test, effect sizes and intervals, thumbs, and a
    recommendation (promote, keep_champion, continue, investigate)."""
    url = url_of(url, config)
    with open_client(url, key) as client:
        view = call(client, "GET", f"/admin/experiments/{name}/report",
                     params={"alpha": alpha, "min_samples": min_samples}).json()
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    table = Table(title=f"{view['experiment']} ({view['mode']}, {view['status']}): "
                        f"{view['arms'][1]['name']} against {view['arms'][0]['name']}, α={view['alpha']}")
    for column in ("evidence", "metric", "n", "champion", "challenger", "effect", "relative", "d",
                   "interval", "p", "decision"):
        table.add_column(column)
    for section, data in view["sections"].items():
        for m in data["metrics"]:
            interval = "—" if m["interval"] is None else f"[{m['interval'][0]:.4g}, {m['interval'][1]:.4g}]"
            table.add_row(section, m["metric"], "/".join(map(str, m["n"])), f"{m['means'][0]:.4g}",
                          f"{m['means'][1]:.4g}", f"{m['effect']:+.4g}",
                          "—" if m["relative"] is None else f"{m['relative']:+.1%}",
                          "—" if m["effect_size"] is None else f"{m['effect_size']:+.2f}", interval,
                          f"{m['p_value']:.3g}", m["decision"])
    console.print(table)
    if view["thumbs"]:
        thumbs = view["thumbs"]
        console.print(f"thumbs up/down: {thumbs['ups']} / {thumbs['downs']}; probability best "
                      f"{[round(p, 3) for p in thumbs['probability_best']]}; expected loss "
                      f"{[round(x, 4) for x in thumbs['expected_loss']]}")
    for score, summary in view["agreement"].items():
        console.print(f"{score}: mean {summary['mean']:.3f} over {summary['n']} pairs")
    if view["sample_ratio"]:
        console.print(f"sample ratio p={view['sample_ratio']['p_value']:.3g}")
    recommendation = view["recommendation"]
    console.print(f"[bold]recommendation: {recommendation['action']}[/bold]")
    for reason in recommendation["reasons"]:
        console.print(f"  - {reason}")


@experiments_app.command("replay")
def replay(name: str, dataset: Path = typer.Option(..., exists=True, dir_okay=False,
                                                   help="JSONL: {messages} (fine-tuning format) or {prompt, ideal}"),
           max_tokens: int = typer.Option(128), temperature: float = typer.Option(0.0),
           concurrency: int = typer.Option(2), wait: bool = typer.Option(True, help="follow it to the end"),
           url: Optional[str] = URL,
           config: Optional[Path] = CONFIG, key: Optional[str] = KEY, as_json: bool = AS_JSON) -> None:
    """Send a stored dataset to both arms; the report then holds the paired results."""
    url = url_of(url, config)
    rows = [json.loads(line) for line in dataset.read_text().splitlines() if line.strip()]
    body = {"dataset": rows, "max_tokens": max_tokens, "temperature": temperature, "concurrency": concurrency}
    with open_client(url, key) as client:
        job = call(client, "POST", f"/admin/experiments/{name}/replay", json=body).json()
        while wait and job["status"] == "running":
            time.sleep(1.0)
            job = call(client, "GET", f"/admin/experiments/{name}/replays/{job['id']}").json()
    show(job, ["id", "experiment", "total", "done", "failed", "status"], as_json)
