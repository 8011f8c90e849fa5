"""``cir replay import``: the authors' published outputs into the content cache or the index."""

from __future__ import annotations

import click

from cir.bench import BENCHMARKS
from cir.cli._common import overrides_option
from cir.replay.apply import METHODS


@click.group("replay")
def replay_group() -> None:
    """Reuse the captions and LLM outputs a paper's authors released (docs/replay.md)."""


@replay_group.command("import")
@click.argument("method", type=click.Choice(METHODS))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, type=click.Choice(BENCHMARKS, case_sensitive=False))
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@click.option("--data-root", required=True, type=click.Path(), help="The benchmark's folder.")
@click.option("--image-root", default=None, type=click.Path(), help="Image folder.")
@click.option("--pipeline", required=True, help="The pipeline the run will use (name or YAML).")
@click.option("--encoder", default=None, help="The run's --encoder, if it gives one.")
@click.option("--cache-dir", default=None, type=click.Path(), help="The run's --cache-dir.")
@click.option("--category", default=None, help="FashionIQ category of a per-category file.")
@click.option("--k", "k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Gallery captions kept per image (weimocir).")  # fmt: skip
@overrides_option
def import_command(method: str, file: str, dataset: str, **options) -> None:
    """Make a run of PIPELINE on DATASET reuse METHOD's released FILE.

    ldre, seize, cirevl and osrcir outputs go into the content cache under the keys the
    pipeline's caption/recompose/reason stages look up; weimocir's gallery captions become the
    caption sidecar of the benchmark's gallery index.
    """
    from cir.replay.apply import replay_gallery_captions, replay_query_outputs

    dataset = dataset.lower()
    k, category = options.pop("k"), options.pop("category")
    options["overrides"] = list(options["overrides"])
    if method == "weimocir":
        summary = replay_gallery_captions(file, dataset=dataset, k=k, **options)
        missing = summary["missing"]
        click.echo(
            f"{summary['images']} gallery images captioned from {file} ({len(missing)} without "
            f"an entry got empty captions{': ' + ', '.join(missing[:5]) if missing else ''})"
        )
        return
    summary = replay_query_outputs(method, file, dataset=dataset, category=category, **options)
    click.echo(
        f"{summary['entries']} cache entries for {summary['queries']} queries from {file}; "
        f"{summary['without_record']} queries without a record, {summary['unmatched']} records "
        f"not in the split, {summary['modification_differs']} with another modification text"
    )


COMMANDS = [replay_group]
