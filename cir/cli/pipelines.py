"""``cir pipelines list|show|plan`` and ``cir stages list``."""

from __future__ import annotations

import json
import textwrap

import click

from cir.cli._common import format_table, overrides_option, preset_option
from cir.index.ann_sizing import parse_memory
from cir.pipeline import list_pipelines, load_pipeline, pipeline_path


@click.group("pipelines")
def pipelines_group() -> None:
    """List, show and plan the shipped pipelines."""


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
@click.option("--flow", is_flag=True, help="Print which stage writes what and who reads it.")
@overrides_option
@preset_option
def show_command(
    name: str, resolved: bool, flow: bool, overrides: tuple[str, ...], preset: str | None
) -> None:
    """Print a pipeline's YAML (its documentation is the comment at its top)."""
    pipe = load_pipeline(name, overrides, preset)  # validates before showing
    if flow:
        click.echo(pipe.flow())
    elif resolved or overrides or preset:
        click.echo(pipe.to_yaml(), nl=False)
    else:
        click.echo(pipeline_path(name).read_text(), nl=False)
    click.echo(_deviations_text(pipe))
    click.echo(_published_text(pipe))


def _published_text(pipe) -> str:
    if not pipe.published:
        return "# published numbers: none declared"
    lines = [f"# published numbers ({len(pipe.published)}):"]
    for row in pipe.published:
        numbers = ", ".join(f"{k} {v:g}" for k, v in row.metrics.items())
        lines.append(f"#  - {row.dataset} {row.split} {row.backbone} ({row.source}): {numbers}")
    return "\n".join(lines)


def _deviations_text(pipe) -> str:
    if pipe.deviations is None:
        return "\n# deviations from the paper: not declared"
    active = pipe.active_deviations()
    if not active:
        return "\n# deviations from the paper: none"
    lines = ["", f"# deviations from the paper ({len(active)}):"]
    for d in active:
        text = f"{d.what} — why: {d.why} — expected effect: {d.effect}"
        lines += textwrap.wrap(text, 96, initial_indent="#  - ", subsequent_indent="#    ")
    return "\n".join(lines)


@pipelines_group.command("reproduce-table")
def reproduce_table_command() -> None:
    """Print docs/reproduce.md: every published row, its command and its deviations."""
    from cir.bench.reproduce import reproduce_table

    click.echo(reproduce_table(), nl=False)


@pipelines_group.command("plan")
@click.argument("name")
@overrides_option
@preset_option
@click.option(
    "--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
    help="Where the models would run.",
)  # fmt: skip
@click.option("--memory", default=None, help="The device's memory, e.g. 24GiB or 80GB.")
@click.option("--gallery", type=int, default=0, help="Gallery images held on the device.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(name, overrides, preset, device, memory, gallery, as_json) -> None:
    """Each stage's models, their parameters and memory, and the peak — before any download.

    Sizes come from each model's config and safetensors metadata (a diffusers pipeline's
    model_index.json and its components' configs): a local folder, the Hugging Face cache, or
    the config files fetched alone from the hub.
    """
    from cir.plan import plan_pipeline

    pipe = load_pipeline(name, overrides, preset)
    plan = plan_pipeline(pipe, device, parse_memory(memory) if memory else None, gallery)
    click.echo(json.dumps(plan.to_dict(), indent=2) if as_json else plan.table())


@click.group("stages")
def stages_group() -> None:
    """The registered stages and their parameters."""


@stages_group.command("list")
@click.argument("name", required=False)
def stages_list_command(name: str | None) -> None:
    """Every registered stage with what it reads, writes and its parameters (or one stage)."""
    from cir.stages.base import registered_stages, stage_class

    classes = {name: stage_class(name)} if name else registered_stages()
    blocks = [_stage_text(cls) for cls in classes.values()]
    click.echo("\n\n".join(blocks))


def _stage_text(cls) -> str:
    import dataclasses

    stage = cls()
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    params = [f"{f.name}={_default(f)}" for f in dataclasses.fields(cls.Params) if f.init]
    lines = [f"{cls.name}: {doc}"]
    lines += [f"  reads   {p.field} ({p.kind}){_doc(p)}" for p in stage.bound_inputs()]
    lines += [f"  writes  {p.field} ({p.kind}){_doc(p)}" for p in stage.bound_outputs()]
    models = [*cls.language_models, *(f"{g} (image generator)" for g in cls.image_generators)]
    models += ["model (CLIP encoder)"] if cls.uses_encoder else []
    if models:
        lines.append(f"  models  {', '.join(models)}")
    if stage.whole_set:
        lines.append("  scope   the whole query set at once")
    lines += textwrap.wrap(", ".join(params), 96, initial_indent="  params  ",
                           subsequent_indent="          ")  # fmt: skip
    return "\n".join(lines)


def _default(f) -> str:
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return json.dumps(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return json.dumps(f.default_factory())
    return "?"


def _doc(port) -> str:
    return f": {port.doc}" if port.doc else ""


COMMANDS = [pipelines_group, stages_group]
