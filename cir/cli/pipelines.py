"""``cir pipelines list|show``."""

from __future__ import annotations

import click

from cir.cli._common import format_table, overrides_option, preset_option
from cir.pipeline import list_pipelines, load_pipeline, pipeline_path


@click.group("pipelines")
def pipelines_group() -> None:
    """List and show the shipped pipelines."""


@pipelines_group.command("list")
def list_command() -> None:
    """Every shipped pipeline with its one-line description."""
    rows = []
    for name in list_pipelines():
        pipe = load_pipeline(name)
        rows.append([name, " -> ".join(s.instance for s in pipe.stages), pipe.description])
    click.echo(format_table(["name", "stages", "description"], rows))


@pipelines_group.command("show")
@click.argument("name")
@click.option("--resolved", is_flag=True, help="Print the validated pipeline with every parameter.")
@overrides_option
@preset_option
def show_command(name: str, resolved: bool, overrides: tuple[str, ...], preset: str | None) -> None:
    """Print a pipeline's YAML (its documentation is the comment at its top)."""
    if resolved or overrides or preset:
        click.echo(load_pipeline(name, overrides, preset).to_yaml(), nl=False)
    else:
        load_pipeline(name)  # validates before showing
        click.echo(pipeline_path(name).read_text(), nl=False)


COMMANDS = [pipelines_group]
