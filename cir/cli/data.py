"""``cir data check``: is a benchmark's data where the readers expect it?
``cir data download``: fetch it into that layout."""

from __future__ import annotations

import json

import click

from cir.bench import BENCHMARKS

DOWNLOADABLE = ("circo", "cirr", "fashioniq", "genecis")


@click.group("data")
def data_group() -> None:
    """Fetch and check benchmark data folders."""


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


_SOURCE_HELP = "Source name (official, hub, ...; see --list) or a source YAML file."
_MIRROR_HELP = "Fetch every URL as MIRROR/<host>/<path> (a local copy of the public files)."
_IMAGES_HELP = "A folder holding the images in any layout (e.g. the NLVR2 download)."


@data_group.command("download")
@click.argument("dataset", type=click.Choice(DOWNLOADABLE, case_sensitive=False))
@click.option("--to", default=None, type=click.Path(file_okay=False),
              help="Target folder (default: ./data/<dataset>).")  # fmt: skip
@click.option("--source", default=None, help=_SOURCE_HELP)
@click.option("--mirror", default=None, help=_MIRROR_HELP)
@click.option("--hub-endpoint", default=None, help="Hugging Face hub address.")
@click.option("--images-from", default=None, type=click.Path(file_okay=False), help=_IMAGES_HELP)
@click.option("--no-images", is_flag=True, help="Fetch the annotation files only.")
@click.option("--keep-archives", is_flag=True, help="Keep image archives after extraction.")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Parallel image downloads (per-image URL lists).")  # fmt: skip
@click.option("--list", "list_sources", is_flag=True, help="List the sources of DATASET and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one flat JSON object.")
def download_command(dataset: str, to: str | None, source: str | None, list_sources: bool,
                     as_json: bool, no_images: bool, **options) -> None:  # fmt: skip
    """Fetch DATASET's annotations and images into its official layout, verified and resumable.

    Interrupted downloads resume when the command is run again; files are checked against
    their pinned sha256; images that cannot be fetched are listed (run `cir bench run
    --allow-missing` to use the rest). Sources, licences and manual steps: docs/datasets.md.
    """
    from cir.bench.download import download, shipped_sources

    dataset = dataset.lower()
    if list_sources:
        for name, src in shipped_sources()[dataset].items():
            click.echo(f"{name}: {src.description}")
            click.echo(f"  licence: {src.licence}")
            if src.manual:
                click.echo(f"  by hand: {src.manual}")
        return
    root = to or f"data/{dataset}"
    report = download(dataset, root, source, images=not no_images, progress=not as_json,
                      **options)  # fmt: skip
    click.echo(json.dumps(report.to_dict()) if as_json else _summary(report))


def _summary(report) -> str:
    present = report.images_needed - report.images_missing
    lines = [
        f"{report.dataset} ({report.source} source) in {report.root}",
        f"  files: {len(report.files_fetched)} fetched, {len(report.files_kept)} already there",
        f"  images: {present} of {report.images_needed} present "
        f"({report.images_placed} placed now)",
        f"  licence: {report.licence}",
    ]
    if report.unpinned:
        lines.append(
            f"  {len(report.unpinned)} file(s) have no pinned sha256: their hash is recorded "
            "in .cir-download.json and checked on later runs"
        )
    if report.missing:
        reasons: dict[str, int] = {}
        for reason in report.missing.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        common = sorted(reasons.items(), key=lambda pair: -pair[1])[:5]
        lines.append(f"  missing images: {report.images_missing}")
        lines += [f"    {n} x {reason}" for reason, n in common]
        lines.append("  `cir bench run ... --allow-missing` runs on the images present")
    if report.manual:
        lines.append(f"  by hand: {report.manual}")
    return "\n".join(lines)


COMMANDS = [data_group]
