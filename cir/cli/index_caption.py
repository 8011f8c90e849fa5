"""``cir index caption``: K captions per gallery image and their embeddings, as a sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from cir.cli._common import check_ray, ray_options
from cir.cli.index import index_group
from cir.errors import ConfigError

COMMANDS: list[click.Command] = []  # registered on the `index` group below


def parse_captioner(text: str) -> dict[str, Any]:
    """A captioner spec from YAML/JSON (``{backend: ..., model: ...}``) or a bare model name."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--captioner does not parse as YAML: {exc}") from None
    if isinstance(value, str):
        return {"backend": "transformers", "model": value}
    if not isinstance(value, dict) or "backend" not in value:
        raise ConfigError(
            "--captioner must be a model name or a mapping with a backend, e.g. "
            "'{backend: transformers, model: Salesforce/blip-image-captioning-large}'"
        )
    return value


@index_group.command("caption")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--captioner", default=None, help="Model name or YAML spec {backend:, model:}.")
@click.option(
    "--captions-file",
    type=click.Path(),
    default=None,
    help='Import captions instead: JSON list of {"candidate": id, "captions": [...]}.',
)
@click.option("--num-captions", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--temperature",
    type=float,
    default=None,
    help="Sampling temperature (default 1.0 when more than one caption, else 0).",
)
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=48, show_default=True)
@click.option("--prompt", default="plain", show_default=True, help="Caption prompt name or file.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--name", default="captions", show_default=True, help="Sidecar name.")
@click.option(
    "--cache/--no-cache",
    default=True,
    show_default=True,
    help="Reuse and store captions in the content cache.",
)
@click.option("--device", default=None, help="Device for models (cuda, cpu); automatic by default.")
@ray_options("Captioner")
def caption_command(
    index_dir: str,
    captioner: str | None,
    captions_file: str | None,
    num_captions: int,
    temperature: float | None,
    top_p: float,
    max_tokens: int,
    prompt: str,
    seed: int,
    batch_size: int,
    name: str,
    cache: bool,
    device: str | None,
    ray_address: str | None,
    ray_workers: int | None,
) -> None:
    """Caption every image of the index at INDEX_DIR (or import captions) for WeiMoCIR.

    Captions are written batch by batch to INDEX_DIR/<name>.partial.jsonl, so an interrupted
    run resumes where it stopped; the sidecar is saved with the index at the end. With --ray
    the images are captioned by a pool of captioner actors sharing the content cache.
    """
    from cir.context import Context
    from cir.gallery_captions import caption_gallery, import_gallery_captions
    from cir.index import GalleryIndex
    from cir.models.shared import resolve_encoder

    if (captioner is None) == (captions_file is None):
        raise ConfigError("give exactly one of --captioner (to caption) or --captions-file")
    check_ray(ray_address)
    index = GalleryIndex.load(index_dir, device=device, mmap=False)
    ctx = Context(index=index, cache=_cache() if cache else None, device=device, progress=True)
    encoder = resolve_encoder(ctx, "index caption", None)
    if captions_file is not None:
        summary = import_gallery_captions(index, captions_file, encoder, name)
    else:
        stage = _caption_stage(
            captioner, num_captions, temperature, top_p, max_tokens, prompt, seed
        )
        progress_file = Path(index_dir) / f"{name}.partial.jsonl"
        summary = caption_gallery(
            index, stage, encoder, ctx, name, batch_size, progress_file, progress=True,
            ray=ray_address, ray_workers=ray_workers,
        )  # fmt: skip
    index.save(index_dir)
    if captions_file is None:
        progress_file.unlink(missing_ok=True)
    details = ", ".join(f"{k} {v}" for k, v in summary.items())
    click.echo(f"sidecar {name!r} saved in {index_dir}: {details}")


def _caption_stage(spec, num_captions, temperature, top_p, max_tokens, prompt, seed):
    from cir.stages.caption import Caption

    if temperature is None:
        temperature = 1.0 if num_captions > 1 else 0.0
    return Caption(
        captioner=parse_captioner(spec),
        num_captions=num_captions,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        prompt=prompt,
        seed=seed,
    )


def _cache():
    from cir.cache import ContentCache

    return ContentCache()
