"""`shipyard monitor export`: the alert rules and SLOs of a shipyard.yaml as `prometheus-rules.yaml`
and a Grafana dashboard JSON, for users who run their own Prometheus and Grafana (offline: no
server needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from shipyard.config import ShipyardConfig
from shipyard.monitor.export import grafana_dashboard, prometheus_rules

monitor_app = typer.Typer(help="Monitoring for your own Prometheus and Grafana.", no_args_is_help=True)


@monitor_app.command("export")
def export(config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False),
           out: Path = typer.Option(Path("."), "--out", "-o", file_okay=False, help="folder to write into")) -> None:
    """Write prometheus-rules.yaml and grafana-dashboard.json."""
    settings = ShipyardConfig.load(config).monitor
    out.mkdir(parents=True, exist_ok=True)
    (out / "prometheus-rules.yaml").write_text(prometheus_rules(settings.alerts.rules, settings.slos))
    (out / "grafana-dashboard.json").write_text(json.dumps(grafana_dashboard(), indent=2) + "\n")
    typer.echo(f"wrote {out / 'prometheus-rules.yaml'} and {out / 'grafana-dashboard.json'}")
