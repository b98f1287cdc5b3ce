"""The `shipyard` command: serve a model, run a worker replica, build the demo model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from shipyard.cli_admin import keys_app, tenants_app, usage
from shipyard.cli_deploy import deploy
from shipyard.cli_eval import eval_app
from shipyard.cli_experiments import experiments_app
from shipyard.cli_monitor import monitor_app
from shipyard.cli_scaling import scaling_app

app = typer.Typer(help="Shipyard: from a model folder to a production, OpenAI-compatible endpoint.",
                  no_args_is_help=True, add_completion=False)
model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(eval_app, name="eval")
app.add_typer(monitor_app, name="monitor")
app.add_typer(scaling_app, name="scaling")
app.add_typer(experiments_app, name="experiments")
app.command("usage")(usage)
app.command("deploy")(deploy)


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local Hugging Face model folder"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="shipyard.yaml", exists=True, dir_okay=False),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="Port (default 8000; 0 picks a free one)"),
    served_model_name: Optional[str] = typer.Option(None, help="Name clients use (default: the folder name)"),
    log_format: Optional[str] = typer.Option(None, help="text or json"),
    num_threads: Optional[int] = typer.Option(None, help="torch threads per engine"),
    workers: Optional[int] = typer.Option(None, min=1, help="Server processes on the port (default 1; more "
                                                            "need Redis for exact limits)"),
    runtime: Optional[str] = typer.Option(None, help="Where autoscaled replicas run: local (worker processes "
                                          "here) or ray (Ray Serve on a Ray cluster; every model becomes an "
                                          "autoscaled deployment)"),
    ray_address: Optional[str] = typer.Option(None, help="The Ray cluster's head (host:port) for --runtime ray"),
):
    """Serve models over an OpenAI-compatible API (the built-in demo model if none is given)."""
    cfg = _configure(config, model, served_model_name, host, port, log_format, num_threads, demo_default=True)
    if runtime is not None or ray_address is not None:
        cfg = _on_runtime(cfg, runtime or "ray", ray_address)
    if workers is not None:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"workers": workers})})
    if cfg.server.workers > 1:
        from shipyard.api.workers import serve_workers

        serve_workers(cfg, cfg.server.workers)
        return
    from shipyard.api.server import run as run_server
    from shipyard.app import build_app

    run_server(build_app(cfg), cfg.server)


@app.command()
def worker(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local Hugging Face model folder"),
    port: int = typer.Option(..., help="Port to listen on"),
    token: Optional[str] = typer.Option(None, envvar="SHIPYARD_WORKER_TOKEN",
                                        help="Internal token the gateway presents (env SHIPYARD_WORKER_TOKEN)"),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="shipyard.yaml (its deployments)",
                                          exists=True, dir_okay=False),
    served_model_name: Optional[str] = typer.Option(None, help="Name the gateway uses (default: the folder name)"),
    log_format: Optional[str] = typer.Option(None, help="text or json"),
    num_threads: Optional[int] = typer.Option(None, help="torch threads per engine"),
):
    """One engine replica as its own process, for a gateway in front: the OpenAI routes plus
    /health, /ready and /metrics, every route but /health and /ready behind the internal token."""
    from shipyard.api.server import run as run_server
    from shipyard.app import build_worker_app

    if not token or len(token) < 16:
        raise typer.BadParameter("a token of 16+ characters is needed (--token or SHIPYARD_WORKER_TOKEN)",
                                 param_hint="--token")
    cfg = _configure(config, model, served_model_name, host, port, log_format, num_threads, demo_default=False)
    if not cfg.deployments:
        raise typer.BadParameter("give --model PATH (or a --config with deployments)", param_hint="--model")
    run_server(build_worker_app(cfg, token), cfg.server)


def _configure(config, model, served_model_name, host, port, log_format, num_threads, demo_default: bool):
    """The config file (if any) with the command line's overrides, logging set up."""
    from shipyard.config import ShipyardConfig
    from shipyard.monitor.logs import configure_logging

    cfg = ShipyardConfig.load(config)
    if model is not None:
        cfg = cfg.with_model(model, served_model_name)
    elif not cfg.deployments and demo_default:
        cfg = cfg.with_model(str(_ensure_demo_model()), served_model_name or "shipyard-demo")
    server = cfg.server.model_copy(update={k: v for k, v in
                                           {"host": host, "port": port, "log_format": log_format}.items()
                                           if v is not None})
    cfg = cfg.model_copy(update={"server": server})
    if num_threads is not None:
        cfg = cfg.model_copy(update={"deployments": {
            name: d.model_copy(update={"num_threads": num_threads}) if hasattr(d, "num_threads") else d
            for name, d in cfg.deployments.items()}})
    configure_logging(server.log_format, server.log_level)
    return cfg


def _on_runtime(cfg, runtime: str, ray_address: str | None):
    from pydantic import ValidationError

    if runtime not in ("local", "ray"):
        raise typer.BadParameter(f"{runtime!r}: local or ray", param_hint="--runtime")
    if ray_address is not None and runtime != "ray":
        raise typer.BadParameter("--ray-address goes with --runtime ray", param_hint="--ray-address")
    try:
        return cfg.on_runtime(runtime, ray_address)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise typer.BadParameter(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                                 param_hint="--runtime") from None


def _ensure_demo_model() -> Path:
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


@app.command()
def version():
    """Print the version."""
    from shipyard import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()
