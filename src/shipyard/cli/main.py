"""The `shipyard` command: registers every command group; each lives in its own module."""

from __future__ import annotations

import typer

from shipyard.cli.admin import keys_app, tenants_app, usage
from shipyard.cli.deploy import deploy
from shipyard.cli.eval import eval_app
from shipyard.cli.experiments import experiments_app
from shipyard.cli.model import model_app, version
from shipyard.cli.monitor import monitor_app
from shipyard.cli.scaling import scaling_app
from shipyard.cli.serve import serve_command, worker_command

app = typer.Typer(help="Shipyard: from a model folder to a production, OpenAI-compatible endpoint.",
                  no_args_is_help=True, add_completion=False)
app.command("serve")(serve_command)
app.command("worker")(worker_command)
app.command("deploy")(deploy)
app.command("usage")(usage)
app.command("version")(version)
app.add_typer(model_app, name="model")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(eval_app, name="eval")
app.add_typer(monitor_app, name="monitor")
app.add_typer(scaling_app, name="scaling")
app.add_typer(experiments_app, name="experiments")
