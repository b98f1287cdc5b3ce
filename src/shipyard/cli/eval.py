"""`shipyard eval run|hallucination`: output quality and the hallucination signals' power, measured
through a running server (`--url`, `--key`: an admin key, since eval scores are the system's own)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shipyard.cli.client import CONFIG, KEY, URL, server_of, url_of
from shipyard.evaluation.hallucination import evaluate_signals, load_labelled
from shipyard.evaluation.metrics import METRICS
from shipyard.evaluation.run import DatasetError, load_dataset, run_eval

eval_app = typer.Typer(help="Evaluate deployments: quality over a dataset, hallucination signals.",
                       no_args_is_help=True)
console = Console()


def _async_client(url: str | None, key: str | None) -> httpx.AsyncClient:
    base, headers = server_of(url, key)
    return httpx.AsyncClient(base_url=base, headers=headers, timeout=600)


async def _eval_once(url, key, deployment, rows, metrics, name, concurrency, max_tokens) -> dict:
    async with _async_client(url, key) as client:
        return await run_eval(client, deployment, rows, metrics, name, concurrency, max_tokens)


@eval_app.command("run")
def run(deployment: str = typer.Option(..., "--deployment", "-d", help="the deployment (model name) to evaluate"),
        dataset: Path = typer.Option(..., "--dataset", exists=True, dir_okay=False,
                                     help="JSONL: messages or prompt, expected (string or list), id"),
        metric: list[str] = typer.Option(..., "--metric", "-m", help=f"repeatable: {', '.join(METRICS)}"),
        report: Optional[Path] = typer.Option(None, "--report", help="where the JSON report goes"),
        concurrency: int = typer.Option(4, min=1, max=64), max_tokens: int = typer.Option(256, min=1),
        limit: Optional[int] = typer.Option(None, min=1, help="only the first N rows"),
        every: Optional[float] = typer.Option(None, min=1.0, help="repeat every N seconds (a scheduled eval)"),
        times: Optional[int] = typer.Option(None, min=1, help="with --every: stop after N runs"),
        url: Optional[str] = URL, config: Optional[Path] = CONFIG, key: Optional[str] = KEY) -> None:
    """Send every row to the deployment, score the answers, write `eval.<metric>` scores and a report."""
    url = url_of(url, config)
    unknown = [m for m in metric if m not in METRICS]
    if unknown:
        raise typer.BadParameter(f"unknown metric {', '.join(unknown)}: one of {', '.join(METRICS)}")
    try:
        rows = load_dataset(dataset, limit)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc)) from None
    done = 0
    while True:
        try:
            result = asyncio.run(_eval_once(url, key, deployment, rows, metric, dataset.name, concurrency, max_tokens))
        except (RuntimeError, httpx.HTTPError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1)
        path = report or Path(f"eval-{deployment}-{int(result['started_at'])}.json")
        path.write_text(json.dumps(result, indent=2) + "\n")
        table = Table(title=f"{deployment} on {dataset.name}: {result['rows']} rows, {result['errors']} errors")
        for column in ("metric", "mean", "n"):
            table.add_column(column)
        for name, figures in result["metrics"].items():
            table.add_row(name, "—" if figures["mean"] is None else f"{figures['mean']:.4f}", str(figures["n"]))
        console.print(table)
        failed = [r for r in result["results"] if r["error"]]
        for row in failed[:10]:  # why, not only how many
            console.print(f"[red]row {row['id']}: {row['error']}[/red]")
        if len(failed) > 10:
            console.print(f"[red]... and {len(failed) - 10} more (see the report)[/red]")
        console.print(f"report: {path}")
        if failed and len(failed) == result["rows"]:
            console.print("[red]every row failed: nothing was scored[/red]")
            raise typer.Exit(1)
        done += 1
        if every is None or (times is not None and done >= times):
            return
        time.sleep(every)


@eval_app.command("hallucination")
def hallucination(labelled: Path = typer.Option(..., "--labelled", exists=True, dir_okay=False,
                                                help="JSONL: request_id or messages/prompt, hallucinated: bool"),
                  deployment: Optional[str] = typer.Option(None, "--deployment", "-d",
                                                           help="where rows with a prompt are sent"),
                  report: Optional[Path] = typer.Option(None, "--report"),
                  max_tokens: int = typer.Option(128, min=1), wait: float = typer.Option(60.0, min=0),
                  url: Optional[str] = URL, config: Optional[Path] = CONFIG, key: Optional[str] = KEY) -> None:
    """The AUROC of each hallucination signal (logprobs, entropy, consistency, faithfulness)."""
    url = url_of(url, config)
    try:
        rows = load_labelled(labelled)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc)) from None
    if deployment is None and any(row.request_id is None for row in rows):
        raise typer.BadParameter("rows with a prompt need --deployment")

    async def go() -> dict:
        async with _async_client(url, key) as client:
            return await evaluate_signals(client, rows, deployment, max_tokens, wait)

    result = asyncio.run(go())
    table = Table(title=f"hallucination signals on {labelled.name}: {result['rows']} rows, {result['errors']} errors")
    for column in ("signal", "AUROC", "hallucinated", "faithful"):
        table.add_column(column)
    for name, figures in result["signals"].items():
        value = "—" if figures["auroc"] is None else f"{figures['auroc']:.3f}"
        table.add_row(name, value, str(figures["hallucinated"]), str(figures["faithful"]))
    console.print(table)
    if report is not None:
        report.write_text(json.dumps(result, indent=2) + "\n")
