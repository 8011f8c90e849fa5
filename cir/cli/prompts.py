"""``cir prompts list|show``: the shipped prompt files, their versions and hashes."""

from __future__ import annotations

import click

from cir.cli._common import format_table
from cir.errors import ConfigError
from cir.prompts import list_prompts, load_prompt


@click.group("prompts")
def prompts_group() -> None:
    """List and show prompt files (shipped ones, or your own by path)."""


@prompts_group.command("list")
@click.option(
    "--stage", default=None, help="Only the prompts of this stage (caption, recompose, ...)."
)
def list_command(stage: str | None) -> None:
    """Every shipped prompt version with its parser, fallback policy and hash."""
    rows = [
        [
            p.ref,
            p.parser_spec.get("kind", ""),
            p.fallback.policy + (f"x{p.fallback.retries}" if p.fallback.retries else ""),
            p.sha256[:12],
            p.description.split(". ")[0][:70],
        ]
        for p in list_prompts(stage)
    ]
    if not rows:
        raise ConfigError(f"no shipped prompts for stage {stage!r}")
    click.echo(format_table(["prompt", "parser", "fallback", "sha256", "description"], rows))


@prompts_group.command("show")
@click.argument("name")
@click.option("--stage", default=None, help="Look a bare NAME up in this stage's prompts.")
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="NAME=VALUE",
    help="Render the template with these values instead of printing the file (repeatable).",
)
def show_command(name: str, stage: str | None, variables: tuple[str, ...]) -> None:
    """Print a prompt file (NAME like recompose/general, recompose/general.v1, or a path)."""
    prompt = load_prompt(name, stage=stage)
    click.echo(f"# {prompt.ref}  sha256 {prompt.sha256}  {prompt.path}", err=True)
    if not variables:
        click.echo(prompt.path.read_text(encoding="utf-8"), nl=False)
        return
    values = {}
    for item in variables:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--var {item!r} must look like NAME=VALUE")
        values[key] = value
    if prompt.system:
        click.echo(f"[system]\n{prompt.system}\n[user]")
    click.echo(prompt.render(**values))


COMMANDS = [prompts_group]
