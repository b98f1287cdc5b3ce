"""`shipyard serve` and `shipyard worker`: the configuration from shipyard.yaml and the command
line, and the plain functions that serve it (`shipyard deploy` calls them too)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve_command(
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
    embedding_model: Optional[str] = typer.Option(None, "--embedding-model",
                                                  help="Also serve an embedding model on /v1/embeddings: 'builtin' "
                                                       "(the shipped all-MiniLM-L6-v2, as shipyard-embed) or a "
                                                       "sentence-transformers folder (under its folder's name)"),
):
    """Serve models over an OpenAI-compatible API (the built-in demo model if none is given)."""
    cfg = configure(config, model, served_model_name, host, port, log_format, num_threads, demo_default=True)
    if embedding_model is not None:
        cfg = with_embedding_model(cfg, embedding_model)
    if runtime is not None or ray_address is not None:
        cfg = _on_runtime(cfg, runtime or "ray", ray_address)
    if workers is not None:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"workers": workers})})
    run_gateway(cfg)


def with_embedding_model(cfg, model: str):
    if model != "builtin" and not Path(model).expanduser().is_dir():
        raise typer.BadParameter(f"{model} is not a folder (give a sentence-transformers folder, or 'builtin')",
                                 param_hint="--embedding-model")
    return cfg.with_embedding_model(model)


def run_gateway(cfg) -> None:
    """Serve a configured gateway until it is stopped: one process, or `server.workers` of them."""
    if cfg.server.workers > 1:
        from shipyard.server.workers import serve_workers

        serve_workers(cfg, cfg.server.workers)
        return
    from shipyard.server.app import build_app
    from shipyard.server.process import run as run_server

    run_server(build_app(cfg), cfg.server)


def worker_command(
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
    if not token or len(token) < 16:
        raise typer.BadParameter("a token of 16+ characters is needed (--token or SHIPYARD_WORKER_TOKEN)",
                                 param_hint="--token")
    cfg = configure(config, model, served_model_name, host, port, log_format, num_threads, demo_default=False)
    if not cfg.deployments:
        raise typer.BadParameter("give --model PATH (or a --config with deployments)", param_hint="--model")
    run_worker(cfg, token)


def run_worker(cfg, token: str) -> None:
    """Serve one engine replica behind the internal token until it is stopped."""
    from shipyard.server.process import run as run_server
    from shipyard.server.worker_app import build_worker_app

    run_server(build_worker_app(cfg, token), cfg.server)


def configure(config, model, served_model_name, host, port, log_format, num_threads, demo_default: bool):
    """The config file (if any) with the command line's overrides, logging set up."""
    from shipyard.config import ShipyardConfig
    from shipyard.monitor.logs import configure_logging

    cfg = ShipyardConfig.load(config)
    if model is not None:
        cfg = cfg.with_model(model, served_model_name)
    elif not cfg.deployments and demo_default:
        from shipyard.cli.model import ensure_demo_model

        cfg = cfg.with_model(str(ensure_demo_model()), served_model_name or "shipyard-demo")
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
