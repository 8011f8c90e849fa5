"""``cir data check``: is a benchmark's data where the readers expect it?"""

from __future__ import annotations

import json

import click

from cir.bench import BENCHMARKS


@click.group("data")
def data_group() -> None:
    """Check benchmark data folders."""


@data_group.command("check")
@click.argument("dataset", type=click.Choice(BENCHMARKS, case_sensitive=False))
@click.option("--data-root", required=True, type=click.Path(), help="Annotation folder.")
@click.option(
    "--image-root", default=None, type=click.Path(), help="Image folder (default: data root)."
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    type=click.Choice(["val", "test"]),
    help="Split(s) to check (default: both).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one flat JSON object.")
def check_command(
    dataset: str, data_root: str, image_root: str | None, splits: tuple[str, ...], as_json: bool
) -> None:
    """Print the layout DATASET expects and the first file missing under --data-root.

    Annotation files are checked first, then every gallery image of each split. Exits with
    status 1 when a file is missing.
    """
    from cir.bench.datasets import get_dataset

    ds = get_dataset(dataset.lower(), data_root, image_root=image_root)
    result = {"dataset": ds.name, "data_root": str(data_root), "ok": True, "checked": 0}
    result |= {"first_missing": None, "first_missing_split": None}
    for split in splits or ds.splits:
        missing, checked = ds.first_missing(split)
        result["checked"] += checked
        if missing is not None:
            result |= {"ok": False, "first_missing": str(missing), "first_missing_split": split}
            break
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{ds.name}: expected layout\n{ds.expected_tree()}\n")
        if result["ok"]:
            click.echo(f"all {result['checked']} files present")
        else:
            click.echo(
                f"first missing file ({result['first_missing_split']} split, after "
                f"{result['checked'] - 1} present): {result['first_missing']}"
            )
    if not result["ok"]:
        raise SystemExit(1)


COMMANDS = [data_group]
