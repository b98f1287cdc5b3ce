"""`shipyard deploy MODEL_PATH`: the one command from a model folder (or GGUF file) to an endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()  # the plan goes to stdout
if not console.is_terminal:  # a pipe or a file: the measured table's rows whole, not folded to 80 columns
    console = Console(width=150)
errors = Console(stderr=True)


def _plan_table(chosen, title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in chosen.rows():
        table.add_row(key, value)
    return table


def measured_table(selection, title: str) -> Table:
    """One row per measured candidate; the choice marked."""
    table = Table(title=title)
    for name, justify in (("", "left"), ("candidate", "left"), ("tok/s c=1", "right"), ("tok/s c=8", "right"),
                          ("TTFT ms", "right"), ("memory MiB", "right"), ("perplexity", "right"),
                          ("loss %", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    for m in selection.measurements:
        mark = "→" if m is selection.chosen else ""
        if m.error:
            table.add_row(mark, m.candidate.label, "-", "-", "-", "-", "-", "-", f"failed: {m.error[:60]}")
            continue
        table.add_row(mark, m.candidate.label, f"{m.decode_tokens_per_s:,.0f}", f"{m.throughput_tokens_per_s:,.0f}",
                      f"{m.ttft_ms:.1f}", f"{m.resident_bytes / 2**20:,.0f}", f"{m.perplexity:.3f}",
                      f"{m.loss_pct:+.2f}", "" if m.within_bound else "over the bound")
    return table


def _measurable(model_path: Path, optimize: str) -> str | None:
    """Why the predicted plan is used instead of measurement (None: measure)."""
    from shipyard.optimize.profile import HardwareProfile

    if optimize != "auto":
        return f"--optimize {optimize} was asked for"
    if model_path.suffix == ".gguf":
        return "a GGUF file is served as it is"
    if HardwareProfile.detect().gpus:
        return "on a GPU the plan is predicted (vLLM runs out of process; measure it with bench/ on the machine)"
    return None


def deploy(
    model_path: Path = typer.Argument(..., help="A Hugging Face model folder or a .gguf file", exists=True),
    optimize: str = typer.Option("auto", help="auto | none | int8 | fp8 | gptq | awq | gguf-q8_0 | gguf-q4_k_m"),
    plan_only: bool = typer.Option(False, "--plan", help="Print the plan (measured candidates) and exit"),
    objective: str = typer.Option("throughput", help="throughput (tokens/s at concurrency 8 within --max-ttft-ms) | "
                                                     "latency (one stream's tokens/s) | memory (least resident)"),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="--no-measure: the predicted plan, nothing run "
                                 "(for models too large to try quickly)"),
    remeasure: bool = typer.Option(False, help="Measure again even where this machine measured this model before"),
    config: Path = typer.Option(Path("shipyard.yaml"), "--config", "-c", help="Where the deployment is written"),
    name: Optional[str] = typer.Option(None, help="The deployment's name (default: the model's folder name)"),
    max_perplexity_loss: float = typer.Option(2.0, min=0, help="Quality bound, percent of the unquantized perplexity"),
    max_ttft_ms: float = typer.Option(1000.0, min=0, help="TTFT bound of the throughput objective"),
    serve: bool = typer.Option(True, help="Serve once deployed (--no-serve: only convert, verify and write)"),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)"),
):
    """Profile the machine and the model, measure the ways to serve it, choose, verify, serve."""
    from shipyard.optimize.deploy import deploy as run_deploy
    from shipyard.optimize.deploy import deploy_measured, make_plan, save_plan, write_config
    from shipyard.optimize.measure import OBJECTIVES
    from shipyard.optimize.profile import NotAModel
    from shipyard.optimize.select import PlanError

    if objective not in OBJECTIVES:
        raise typer.BadParameter(f"one of {', '.join(OBJECTIVES)}", param_hint="--objective")
    model_path = model_path.expanduser().resolve()
    predicted_because = "--no-measure" if not measure else _measurable(model_path, optimize)
    try:
        if predicted_because is None:
            with console.status("measuring") as status:
                deployed, selection = deploy_measured(model_path, objective, max_perplexity_loss, max_ttft_ms,
                                                      progress=status.update, refresh=remeasure)
            if plan_only:
                cached = " (measured earlier on this machine)" if selection.cached else ""
                console.print(measured_table(selection, f"Measured for {model_path.name}: objective {objective}"
                                                        f"{cached}"))
                console.print(f"  reference perplexity {selection.reference_perplexity:.3f}")
                for reason in selection.reasons:
                    console.print(f"  • {reason}")
                return
        elif plan_only:
            _, _, chosen = make_plan(model_path, optimize)
            console.print(_plan_table(chosen, f"Plan for {model_path.name} (predicted: {predicted_because})"))
            for reason in chosen.reasons:
                console.print(f"  • {reason}")
            return
        else:
            with console.status("planning") as status:
                deployed = run_deploy(model_path, optimize, max_perplexity_loss, progress=status.update)
    except (PlanError, NotAModel) as exc:
        errors.print(f"[red]cannot deploy:[/red] {exc}")
        raise typer.Exit(2) from None
    if name:
        deployed.name = name
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
