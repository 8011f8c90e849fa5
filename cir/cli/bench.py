"""``cir bench run|evaluate|validate``: benchmark runs, local scoring, submission checks."""

from __future__ import annotations

import json

import click

from cir.bench import BENCHMARKS
from cir.bench.datasets.genecis import TASKS as GENECIS_TASKS
from cir.cli._common import (
    backend_options,
    check_ray,
    compute_option,
    device_option,
    format_table,
    overrides_option,
    preset_option,
    ray_options,
)

dataset_argument = click.argument("dataset", type=click.Choice(BENCHMARKS, case_sensitive=False))
data_root_option = click.option(
    "--data-root", required=True, type=click.Path(), help="Folder with the official annotations."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one flat JSON object.")


@click.group("bench")
def bench_group() -> None:
    """Run, score and check CIRCO, CIRR, FashionIQ, GeneCIS, i-CIR and ZeroSight benchmarks."""


@bench_group.command("run")
@dataset_argument
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@data_root_option
@click.option(
    "--image-root", default=None, type=click.Path(), help="Image folder (default: data root)."
)
@click.option("--pipeline", required=True, help="Pipeline name or YAML path.")
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Run folder.")
@click.option("--encoder", default=None, help="Gallery CLIP encoder (default: the pipeline's).")
@click.option("--cache-dir", default=None, type=click.Path(), help="Index and content cache.")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Index build workers.")
@click.option("--text-rule", default=None, help="How query texts are made (see docs/datasets.md).")
@click.option(
    "--category", "categories", multiple=True, help="FashionIQ categories (default: all)."
)
@click.option(
    "--task", "tasks", multiple=True, type=click.Choice(GENECIS_TASKS),
    help="GeneCIS tasks (default: those whose file is present).",
)  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N queries.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the content cache.")
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Run on the images present: drop queries whose reference or target is absent and "
    "report how many queries and gallery images were missing.",
)
@overrides_option
@preset_option
@device_option
@compute_option
@ray_options("Language-model")
@backend_options
@json_option
def run_command(dataset: str, split: str, as_json: bool, **options) -> None:
    """Run a pipeline on DATASET and write predictions, metrics or submissions, and a report.

    With --ray the batches of language-model stages run on a pool of Ray actors that share the
    content cache; the predictions are the same.
    """
    from cir.bench.runner import run_benchmark

    check_ray(options["ray_address"])
    options["ray"] = options.pop("ray_address")
    options["categories"] = options["categories"] or None
    options["tasks"] = options["tasks"] or None
    result = run_benchmark(dataset.lower(), split, progress=not as_json, **options)
    missing = result.manifest.get("missing")
    if missing and not missing["complete"]:
        click.echo(
            f"warning: incomplete data: {missing['gallery_images']} of "
            f"{missing['gallery_total']} gallery images missing, {missing['queries_dropped']} "
            f"of {missing['queries_total']} queries dropped; the numbers are labelled as such",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(result.flat()))
        return
    click.echo(f"run folder: {result.out_dir}")
    for path in result.files:
        click.echo(f"  wrote {path}")
    if result.metrics:
        click.echo(_metrics_table(result.metrics))


@bench_group.command("evaluate")
@dataset_argument
@click.option("--split", type=click.Choice(["val"]), default="val", show_default=True)
@data_root_option
@click.option(
    "--predictions",
    multiple=True,
    required=True,
    type=click.Path(),
    help="Predictions file in the official format (repeatable).",
)
@click.option("--subset-predictions", default=None, type=click.Path(), help="CIRR top-3 file.")
@click.option("--allow-partial", is_flag=True, help="Score only the queries present.")
@json_option
def evaluate_command(
    dataset: str,
    split: str,
    data_root: str,
    predictions: tuple[str, ...],
    subset_predictions: str | None,
    allow_partial: bool,
    as_json: bool,
) -> None:
    """Score prediction files of DATASET with its annotation files only."""
    from cir.bench.evaluate import evaluate_files

    result = evaluate_files(
        dataset.lower(), split, data_root, predictions, subset_predictions, allow_partial
    )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(result.metrics))
        return
    click.echo(f"{result.dataset} {result.split}: {result.n_queries} queries scored")
    click.echo(_metrics_table(result.metrics))


@bench_group.command("validate")
@dataset_argument
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@data_root_option
@json_option
def validate_command(
    dataset: str, files: tuple[str, ...], split: str, data_root: str, as_json: bool
) -> None:
    """Check submission FILES for DATASET as the test server would; exit 1 if invalid."""
    from cir.bench.submission import validate_file

    reports = [validate_file(dataset.lower(), split, data_root, f) for f in files]
    ok = all(r.ok for r in reports)
    if as_json:
        flat = {
            "ok": ok,
            "files": [r.path for r in reports],
            "kinds": [r.kind for r in reports],
            "errors": [f"{r.path}: {e}" for r in reports for e in r.errors],
            "warnings": [f"{r.path}: {w}" for r in reports for w in r.warnings],
        }
        click.echo(json.dumps(flat))
    else:
        for report in reports:
            click.echo(report.summary())
    if not ok:
        raise SystemExit(1)


@bench_group.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", default=None, type=click.Path(),
              help="Write compare.md, compare.json and compare.png into this folder.")  # fmt: skip
@json_option
def compare_command(run_dirs: tuple[str, ...], out_dir: str | None, as_json: bool) -> None:
    """Put the metrics of several RUN_DIRS side by side, with how their manifests differ.

    The first run is the baseline: every other value shows its difference to it.
    """
    from cir.bench.compare import compare_runs

    comparison = compare_runs(run_dirs)
    files = comparison.write(out_dir) if out_dir else []
    if as_json:
        click.echo(json.dumps(comparison.to_dict(), default=str))
        return
    click.echo(comparison.markdown())
    for path in files:
        click.echo(f"wrote {path}")


@bench_group.command("reproduce")
@click.argument("pipeline")
@dataset_argument
@click.option("--backbone", default=None, help="The published row's backbone, e.g. ViT-B-32.")
@data_root_option
@click.option("--dry-run", is_flag=True, help="Print the command instead of running it.")
def reproduce_command(
    pipeline: str, dataset: str, backbone: str | None, data_root: str, dry_run: bool
) -> None:
    """Run the published setting of PIPELINE on DATASET (a row of docs/reproduce.md)."""
    import shlex

    from cir.bench.reproduce import find_row

    row = find_row(pipeline, dataset.lower(), backbone)
    click.echo(shlex.join(row.command(data_root)), err=not dry_run)
    if not dry_run:
        bench_group.main(["run", *row.arguments(data_root)], standalone_mode=False)


def _metrics_table(metrics: dict[str, float]) -> str:
    from cir.bench.report import format_value

    return format_table(["metric", "value"], [[k, format_value(v)] for k, v in metrics.items()])


COMMANDS = [bench_group]
