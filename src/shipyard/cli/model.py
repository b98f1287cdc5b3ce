"""`shipyard model build-demo|path` and `shipyard version`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)


def ensure_demo_model() -> Path:
    from shipyard.demo.build import default_demo_path

    path = default_demo_path()
    if not (path / "config.json").is_file():
        typer.echo(f"Demo model not found at {path}; building it (about 3 minutes on 2 cores).", err=True)
        _build_demo(path, tiny=False)
    return path


def _build_demo(out: Path, tiny: bool) -> Path:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from shipyard.demo.build import DEMO, TINY, build_model

    spec = TINY if tiny else DEMO
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn()) as progress:
        task = progress.add_task("training demo model", total=max(spec.steps, 1), loss="-")

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, loss=f"{loss:.3f}")

        path = build_model(out, spec, progress=report, corpus_chars=200_000 if tiny else None)
        progress.update(task, completed=max(spec.steps, 1))
    return path


@model_app.command("build-demo")
def build_demo(
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the user cache)"),
    tiny: bool = typer.Option(False, help="A tiny random model for tests (seconds)"),
    force: bool = typer.Option(False, help="Rebuild even if present"),
):
    """Train the demo model (tokenizer + small Llama) on text that ships with Python."""
    from shipyard.demo.build import DEMO, TINY, default_demo_path

    path = out or default_demo_path(TINY if tiny else DEMO)
    if (path / "config.json").is_file() and not force:
        typer.echo(str(path))
        return
    _build_demo(path, tiny)
    typer.echo(str(path))


@model_app.command("path")
def model_path():
    """Print where the demo model lives (built or not)."""
    from shipyard.demo.build import default_demo_path

    typer.echo(str(default_demo_path()))




def version():
    """Print the version."""
    from shipyard import __version__

    typer.echo(__version__)
