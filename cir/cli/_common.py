"""Options and helpers shared by several ``cir`` commands."""

from __future__ import annotations

import click

overrides_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a pipeline parameter, e.g. --set stages.fuse.alpha=0.7 (repeatable).",
)
preset_option = click.option(
    "--preset", default=None, help="Apply a preset of the pipeline (e.g. cirr, fashioniq)."
)
device_option = click.option(
    "--device", default=None, help="Device for models (cuda, cuda:1, cpu); automatic by default."
)
compute_option = click.option(
    "--compute",
    default="auto",
    show_default=True,
    help="How exact search multiplies: auto (the fastest path of this machine, see "
    "`cir index info`), or force fp32, fp16, bf16 or faiss.",
)


def ray_options(actors: str):
    """``--ray [ADDRESS]`` and ``--ray-workers N`` (``actors`` names what each actor holds)."""

    def decorate(command):
        command = click.option(
            "--ray-workers",
            type=click.IntRange(min=1),
            default=None,
            help=f"{actors} actors on Ray (default: one per GPU, else one per spare CPU).",
        )(command)
        return click.option(
            "--ray",
            "ray_address",
            is_flag=False,
            flag_value="local",
            default=None,
            metavar="[ADDRESS]",
            help="Run on a Ray cluster: --ray alone starts a local one; give 'auto' or "
            "ray://HOST:10001 for an existing cluster (needs pip install 'cir[ray]').",
        )(command)

    return decorate


def check_ray(ray_address: str | None) -> None:
    """Fail before any model loads when --ray is given and Ray is not installed."""
    if ray_address:
        from cir.ray_engine import require

        require()


def backend_options(command):
    """``--backend`` (exact, ivfpq, milvus:URI[#collection]), ``--nprobe`` and ``--rescore``."""
    command = click.option(
        "--rescore",
        type=click.IntRange(min=1),
        default=None,
        help="Candidates per query rescored exactly (approximate backends; default 256).",
    )(command)
    command = click.option(
        "--nprobe",
        type=click.IntRange(min=1),
        default=None,
        help="Lists visited per query (approximate backends; default 32).",
    )(command)
    return click.option(
        "--backend",
        default="exact",
        show_default=True,
        help="exact; ivfpq (built by `cir index ann`); or milvus:URI[#collection] (written by "
        "`cir index export-milvus`). Approximate results are marked in traces and manifests.",
    )(command)


def cache_options(command):
    """``--cache-dir DIR`` and ``--no-cache`` for commands that run pipelines."""
    command = click.option(
        "--no-cache", is_flag=True, help="Compute everything again; read and write no cache."
    )(command)
    return click.option(
        "--cache-dir",
        default=None,
        type=click.Path(file_okay=False),
        help="Content cache folder (default: $CIR_CACHE_DIR or ~/.cache/cir).",
    )(command)


def open_cache(cache_dir: str | None, no_cache: bool):
    """The content cache a command should use, or None when caching is turned off."""
    if no_cache:
        return None
    from cir.cache import ContentCache

    return ContentCache(cache_dir)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, row)) for row in rows]
    return "\n".join(row.rstrip() for row in out)
