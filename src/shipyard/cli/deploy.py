"""`shipyard deploy MODEL_PATH`: the one command from a model folder (or GGUF file) to an endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()  # the plan goes to stdout
errors = Console(stderr=True)


def _plan_table(chosen, title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in chosen.rows():
        table.add_row(key, value)
    return table


def deploy(
    model_path: Path = typer.Argument(..., help="A Hugging Face model folder or a .gguf file", exists=True),
    optimize: str = typer.Option("auto", help="auto | none | int8 | fp8 | gptq | awq | gguf-q8_0 | gguf-q4_k_m"),
    plan_only: bool = typer.Option(False, "--plan", help="Print the plan and exit without converting or serving"),
    config: Path = typer.Option(Path("shipyard.yaml"), "--config", "-c", help="Where the deployment is written"),
    max_perplexity_loss: float = typer.Option(2.0, min=0, help="Quality bound, percent of the unquantized perplexity"),
    serve: bool = typer.Option(True, help="Serve once deployed (--no-serve: only convert, verify and write)"),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)"),
):
    """Profile the machine and the model, choose engine and quantization, convert, verify, serve."""
    from shipyard.optimize.deploy import deploy as run_deploy
    from shipyard.optimize.deploy import make_plan, save_plan, write_config
    from shipyard.optimize.profile import NotAModel
    from shipyard.optimize.select import PlanError

    model_path = model_path.expanduser().resolve()
    try:
        if plan_only:
            _, _, chosen = make_plan(model_path, optimize)
            console.print(_plan_table(chosen, f"Plan for {model_path.name}"))
            for reason in chosen.reasons:
                console.print(f"  • {reason}")
            return
        with console.status("planning") as status:
            deployed = run_deploy(model_path, optimize, max_perplexity_loss, progress=status.update)
    except (PlanError, NotAModel) as exc:
        errors.print(f"[red]cannot deploy:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(_plan_table(deployed.plan, f"Deployed {model_path.name} as '{deployed.name}'"))
    for reason in deployed.plan.reasons:
        console.print(f"  • {reason}")
    write_config(config, deployed)
    from shipyard.config import ShipyardConfig

    cfg = ShipyardConfig.load(config)
    saved = save_plan(cfg.store.resolved_data_dir(), deployed)
    console.print(f"wrote deployment '{deployed.name}' to {config}; plan in {saved}")
    if serve:
        from shipyard.cli.serve import configure, run_gateway

        run_gateway(configure(config, None, None, host, port, None, None, demo_default=False))
