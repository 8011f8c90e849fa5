"""``cir index build`` and ``cir index info``: make a gallery index and describe one."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cir.cli._common import check_ray, format_table, ray_options
from cir.errors import DataError
from cir.index.ids import printable


@click.group("index")
def index_group() -> None:
    """Build and inspect gallery indexes."""


@index_group.command("build")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    required=True,
    help="Encoder: ViT-B-32/openai, hf-hub:org/repo, "
    "local-dir:/path, a Hugging Face id or a local folder.",
)
@click.option("--pretrained", default=None, help="open_clip weights tag (e.g. openai).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Index folder.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Processes decoding images (0: decode in the main process).",
)
@click.option("--device", default=None, help="cuda, cuda:1 or cpu; automatic by default.")
@click.option(
    "--dtype",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    default="fp16",
    show_default=True,
    help="Storage dtype of the embeddings.",
)
@click.option(
    "--preprocessing",
    type=click.Choice(["default", "targetpad"]),
    default="default",
    show_default=True,
    help="Image preprocessing (targetpad as in CIReVL).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Images per shard written while building.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Skip images with more pixels than this (decompression-bomb guard).",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue an interrupted build in --out.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@ray_options("Encoder")
def build_command(
    sources: tuple[Path, ...],
    model: str,
    pretrained: str | None,
    out: Path,
    batch_size: int,
    workers: int,
    device: str | None,
    dtype: str,
    preprocessing: str,
    shard_size: int,
    max_pixels: int | None,
    resume: bool,
    progress: bool,
    ray_address: str | None,
    ray_workers: int | None,
) -> None:
    """Encode the images of SOURCES into an index at --out.

    SOURCES is a folder (searched recursively), or image files and webdataset .tar / parquet
    shards (a glob such as shards/part-*.tar). Images inside shards are read in place; their ids
    are <shard>/<member>. With --ray the images are decoded by Ray tasks and encoded by a pool of
    encoder actors; the index is the same as a local build's, and an interrupted build resumes
    either way.
    """
    from cir.index import GalleryIndex
    from cir.index.build import scan
    from cir.models import load_encoder

    folder = _build_source(sources)
    scan(folder)  # a missing or empty folder fails before a model is loaded
    check_ray(ray_address)
    encoder = load_encoder(model, pretrained=pretrained, device=device, preprocessing=preprocessing)
    idx = GalleryIndex.build(
        folder,
        encoder,
        out=out,
        batch_size=batch_size,
        num_workers=workers,
        shard_size=shard_size,
        resume=resume,
        dtype=dtype,
        max_pixels=max_pixels,
        progress=progress,
        ray=ray_address,
        ray_workers=ray_workers,
    )
    where = " on Ray" if ray_address else ""
    click.echo(
        f"indexed {len(idx)} images ({idx.dim}-d, {idx.dtype}) with "
        f"{encoder.identity.key} into {out}{where}"
    )
    if idx.skipped:
        click.echo(f"skipped {len(idx.skipped)} unreadable file(s) (listed in {out}/skipped.json):")
        for entry in idx.skipped[:10]:
            click.echo(f"  {printable(entry['path'])}: {entry['reason']}")
        if len(idx.skipped) > 10:
            click.echo(f"  ... and {len(idx.skipped) - 10} more")


def _build_source(sources: tuple[Path, ...]) -> Path | list[Path]:
    """One folder, or a list of image and shard files."""
    if len(sources) == 1 and not sources[0].is_file():
        return sources[0]
    folders = [str(p) for p in sources if not p.is_file()]
    if folders:
        raise DataError(
            f"{printable(folders[0])} is not a file; give one folder, or image and shard files"
        )
    return list(sources)


@index_group.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--device", default=None, help="Device searches would run on (default: automatic).")
@click.option(
    "--recalibrate",
    is_flag=True,
    help="Time the compute paths again on this machine and update its cached choice.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Also check every row (finite unit vectors), every id and every image path.",
)
def info_command(
    directory: Path, as_json: bool, device: str | None, recalibrate: bool, verify: bool
) -> None:
    """Describe the index in DIRECTORY: size, encoder, storage, skipped files, and how searches
    run on this machine (CPU flags, the compute path of each batch size).

    Loading an index checks its files and a sample of its rows; --verify checks them all and
    exits with an error naming what is wrong.
    """
    from cir.errors import DataError
    from cir.index import GalleryIndex
    from cir.index.store import read_manifest
    from cir.index.validate import verify_folder

    manifest = read_manifest(directory)
    if verify:
        problems = verify_folder(directory)
        if problems:
            raise DataError(f"{directory} failed verification: " + "; ".join(problems))
        click.echo(f"verified {manifest['count']} rows and ids: no problem found", err=True)
    plan = GalleryIndex.load(directory, device=device).set_compute("auto", recalibrate)
    search = {"machine": plan.machine.to_dict(), "compute": plan.describe()}
    if plan.timings:
        search["seconds_per_query"] = plan.timings
    if as_json:
        click.echo(json.dumps({**manifest, "search": search}, indent=2))
        return
    enc = manifest.get("encoder") or {}
    created = manifest.get("created") or {}
    size = sum(manifest["sizes"].values())
    rows = [
        ["images", str(manifest["count"])],
        ["dimension", str(manifest["dim"])],
        ["storage", f"{manifest['dtype']}, {size / 2**20:.1f} MiB on disk"],
        ["encoder", enc.get("key", "(unknown)")],
        ["model spec", enc.get("spec", "-")],
        ["preprocessing", manifest.get("preprocessing") or "-"],
        ["gallery folder", manifest.get("root") or "-"],
        ["sidecars", ", ".join(manifest.get("sidecars", {})) or "-"],
        ["skipped files", str(manifest.get("skipped", 0))],
        [
            "created",
            f"{created.get('time')} (cir {created.get('cir_version')})",
        ],
        ["search device", f"{plan.machine.device}: {plan.machine.model}"],
        ["CPU flags", " ".join(plan.machine.shown_flags) or "(none of those that matter)"],
        ["compute path", plan.describe()],
    ]
    click.echo(format_table(["field", "value"], rows))


COMMANDS = [index_group]
