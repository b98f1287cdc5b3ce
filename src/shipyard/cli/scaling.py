"""`shipyard scaling simulate`: replay traffic traces through the autoscaling policy and compare it
with static provisioning at the minimum and at the peak."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from shipyard.scaling.simulate import DEFAULT_CONFIG, TRACES, Model, compare

scaling_app = typer.Typer(help="Autoscaling: simulate the policy on traffic traces; Kubernetes manifests.",
                          no_args_is_help=True)


@scaling_app.command("simulate")
def simulate(trace: Optional[list[str]] = typer.Option(None, "--trace", help=f"repeatable: {', '.join(TRACES)} "
                                                                               "(default: all)"),
             seed: int = typer.Option(0), min_replicas: int = typer.Option(DEFAULT_CONFIG.min_replicas, min=0),
             max_replicas: int = typer.Option(DEFAULT_CONFIG.max_replicas, min=1),
             target: float = typer.Option(DEFAULT_CONFIG.target_queue_per_replica, help="queue per replica"),
             cold_start_s: float = typer.Option(20.0, min=0), as_json: bool = typer.Option(False, "--json")) -> None:
    names = trace or list(TRACES)
    unknown = [n for n in names if n not in TRACES]
    if unknown:
        raise typer.BadParameter(f"unknown trace {', '.join(unknown)}: one of {', '.join(TRACES)}")
    config = DEFAULT_CONFIG.model_copy(update={"min_replicas": min_replicas, "max_replicas": max_replicas,
                                               "target_queue_per_replica": target})
    results = {name: compare(name, config, Model(cold_start_s=cold_start_s), seed) for name in names}
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    table = Table(title="autoscaling policy vs static provisioning")
    for column in ("trace", "SLA met", "replica-s", "vs static min", "vs static peak", "static peak",
                   "scale-up s (median)", "scale events", "shed"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(name, f"{r['sla_attainment']:.2%}", f"{r['replica_seconds']:.0f}",
                      f"{r['replica_seconds_vs_static_min']:.2f}× (SLA {r['static_min']['sla_attainment']:.0%})",
                      f"{r['replica_seconds_vs_static_peak']:.2f}×",
                      f"{r['static_peak']['replicas']} (SLA {r['static_peak']['sla_attainment']:.0%})",
                      "—" if r["time_to_scale_up_s"] is None else f"{r['time_to_scale_up_s']:.1f}", str(r["scale_events"]), str(r["shed"]))
    Console().print(table)


@scaling_app.command("manifests")
def manifests(config: Optional[Path] = typer.Option(None, "--config", "-c", help="shipyard.yaml", exists=True,
                                                    dir_okay=False),
              image: str = typer.Option("ghcr.io/shipyard/shipyard:0.1.0", help="the Shipyard container image"),
              autoscaler: str = typer.Option("keda", help="keda (a ScaledObject per model) or hpa (the fallback "
                                             "without KEDA: autoscaling/v2 on a custom metric)"),
              prometheus_url: str = typer.Option("http://prometheus-operated.monitoring:9090",
                                                 help="where KEDA reads the queue depth"),
              models_claim: str = typer.Option("shipyard-models", help="the PersistentVolumeClaim holding the models"),
              gpus: int = typer.Option(0, min=0, help="GPUs per engine pod"),
              out: Optional[Path] = typer.Option(None, "--out", help="write here (default: standard output)")) -> None:
    """Kubernetes manifests for the config's deployments, with the policy's scaling targets."""
    from shipyard.config import ShipyardConfig
    from shipyard.server.kubernetes import render, to_yaml

    if autoscaler not in ("keda", "hpa"):
        raise typer.BadParameter(f"{autoscaler!r}: keda or hpa", param_hint="--autoscaler")
    text = to_yaml(render(ShipyardConfig.load(config), image, autoscaler, prometheus_url, models_claim,  # type: ignore[arg-type]
                          gpus))
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
