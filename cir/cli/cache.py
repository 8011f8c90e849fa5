"""``cir cache info|clear|export|import``: inspect and share the content cache."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cir.cache import ContentCache, default_cache_dir
from cir.cli._common import format_table

cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Cache folder (default: $CIR_CACHE_DIR, else ~/.cache/cir).",
)
stage_option = click.option("--stage", default=None, help="Only entries of this stage.")
kind_option = click.option(
    "--kind", default=None, help="Only entries of this kind (caption, llm, embedding)."
)


@click.group("cache")
def cache_group() -> None:
    """The content cache of captions, LLM outputs and text embeddings."""


@cache_group.command("info")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info_command(cache_dir: Path | None, as_json: bool) -> None:
    """Where the cache is and what it holds, per kind, stage and model."""
    info = ContentCache(cache_dir).info()
    info.pop("stats")
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"{info['path']}: {info['entries']} entries, {info['file_bytes'] / 1e6:.2f} MB")
    rows = [[g["kind"], g["stage"], g["model"], g["entries"]] for g in info["groups"]]
    if rows:
        click.echo(format_table(["kind", "stage", "model", "entries"], rows))


@cache_group.command("clear")
@cache_dir_option
@stage_option
@kind_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clear_command(cache_dir: Path | None, stage: str | None, kind: str | None, yes: bool) -> None:
    """Delete cached entries (all, or those of one stage/kind)."""
    cache = ContentCache(cache_dir)
    what = " ".join(f"{k}={v}" for k, v in (("stage", stage), ("kind", kind)) if v) or "all"
    if not yes:
        click.confirm(f"Delete {what} entries from {cache.path}?", abort=True)
    removed = cache.clear(stage=stage, kind=kind)
    click.echo(f"removed {removed} entries from {cache.path}")


@cache_group.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@cache_dir_option
@stage_option
@kind_option
def export_command(file: Path, cache_dir: Path | None, stage: str | None, kind: str | None) -> None:
    """Write entries to FILE (JSON lines; gzip when FILE ends in .gz) to share them."""
    count = ContentCache(cache_dir).export(file, stage=stage, kind=kind)
    click.echo(f"exported {count} entries to {file}")


@cache_group.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@cache_dir_option
@click.option("--overwrite", is_flag=True, help="Replace entries that already exist.")
@click.option("--verify", is_flag=True, help="Recompute a sample of text embeddings first.")
@click.option(
    "--sample", type=click.IntRange(min=1), default=32, show_default=True,
    help="How many text embeddings --verify recomputes.",
)  # fmt: skip
def import_command(
    file: Path, cache_dir: Path | None, overwrite: bool, verify: bool, sample: int
) -> None:
    """Add the entries of an exported FILE.

    Every entry is checked (key against content, kind, value shape and size) before anything is
    written, and marked as imported: run manifests count the outputs that came from FILE.
    --verify recomputes a sample of text embeddings with their encoder where it can be loaded,
    and refuses the file on a mismatch.
    """
    cache = ContentCache(cache_dir)
    report = cache.import_file(file, overwrite=overwrite, verify=sample if verify else 0)
    click.echo(f"imported {report.added} new entries into {cache.path} ({report.source})")
    if verify:
        click.echo(f"verified {report.verified} recomputed text embeddings: all match")


COMMANDS = [cache_group]
__all__ = ["COMMANDS", "default_cache_dir"]
