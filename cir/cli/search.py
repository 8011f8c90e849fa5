"""``cir search``: one composed query against an index, printed as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cir.cli._common import (
    backend_options,
    cache_options,
    compute_option,
    device_option,
    format_table,
    open_cache,
    overrides_option,
    preset_option,
)
from cir.errors import ConfigError, DataError
from cir.index.ids import printable
from cir.redaction import redact_value
from cir.types import Query


@click.command("search")
@click.option("--index", "index_dir", required=True, type=click.Path(), help="Index folder.")
@click.option("--image", type=click.Path(), default=None, help="Reference image file.")
@click.option("--reference-id", default=None, help="Reference image given by its gallery id.")
@click.option("--text", required=True, help="How the target differs from the reference.")
@click.option("--pipeline", default="clip_fusion", show_default=True, help="Name or YAML path.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (ranking and trace).")
@overrides_option
@preset_option
@device_option
@compute_option
@backend_options
@cache_options
def search_command(
    index_dir: str,
    image: str | None,
    reference_id: str | None,
    text: str,
    pipeline: str,
    k: int,
    as_json: bool,
    overrides: tuple[str, ...],
    preset: str | None,
    device: str | None,
    compute: str,
    backend: str,
    nprobe: int | None,
    rescore: int | None,
    cache_dir: str | None,
    no_cache: bool,
) -> None:
    """Search INDEX for images like the reference, changed as TEXT says."""
    from cir.index import GalleryIndex
    from cir.pipeline import load_pipeline

    if image is not None and reference_id is not None:
        raise ConfigError(
            "give the reference as --image FILE or as --reference-id ID, not both "
            "(with both, one of them would be silently ignored)"
        )
    if image is not None and not Path(image).is_file():
        raise DataError(f"reference image {image!r} does not exist")
    pipe = _with_enough_results(load_pipeline(pipeline, overrides, preset), k, pipeline,
                                overrides, preset)  # fmt: skip
    from cir.index.backends import use_backend

    index = GalleryIndex.load(index_dir, device=device, compute=compute)
    use_backend(index, backend, nprobe, rescore)
    query = Query(text, reference=image, reference_id=reference_id, id="query")
    cache = open_cache(cache_dir, no_cache)
    state = pipe.run([query], index, batch_size=1, cache=cache, device=device, progress=False)[0]
    ranking = state.ranking.top(k) if state.ranking else None
    if cache is not None and cache.stats.imported:
        sources = ", ".join(f"{n} from {src}" for src, n in cache.stats.imported.items())
        click.echo(
            f"note: cached outputs imported from shared files were used ({sources})", err=True
        )
    if as_json:
        summary = state.summary()
        summary["ranking"] = ranking.to_dict() if ranking else None
        click.echo(json.dumps(redact_value(summary), indent=2, default=str))
        return
    _print_readable(state, ranking, index)


def _with_enough_results(pipe, k: int, name: str, overrides, preset):
    """The pipeline, its last ``retrieve`` stage raised to ``k`` results when it keeps fewer."""
    from cir.pipeline import load_pipeline

    retrieves = [stage for stage in pipe.stages if stage.name == "retrieve"]
    if not retrieves or retrieves[-1].params.k >= k:
        return pipe
    raised = [*overrides, f"stages.{retrieves[-1].instance}.k={k}"]
    return load_pipeline(name, raised, preset)


def _print_readable(state, ranking, index) -> None:
    for label, values in (("caption", state.captions), ("target", state.targets)):
        for value in values[:3]:
            click.echo(f"{label}: {value}")
    if ranking is None:
        click.echo("the pipeline produced no ranking (does it end with a retrieve stage?)")
        return
    rows = [
        [str(i), f"{score:.4f}", printable(gid), printable(str(index.path(gid) or ""))]
        for i, (gid, score) in enumerate(zip(ranking.ids, ranking.scores, strict=True), 1)
    ]
    click.echo(format_table(["rank", "score", "id", "path"], rows))


COMMANDS = [search_command]
