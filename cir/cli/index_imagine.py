"""``cir index imagine``: a synthetic twin of every gallery image, as an index sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from cir.cli.index import index_group
from cir.cli.index_caption import parse_captioner
from cir.errors import ConfigError

COMMANDS: list[click.Command] = []  # registered on the `index` group below


def parse_generator(text: str) -> dict[str, Any]:
    """A generator spec from YAML/JSON (``{model: ..., dtype: ...}``) or a bare model name."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--generator does not parse as YAML: {exc}") from None
    if isinstance(value, str):
        return {"model": value}
    if not isinstance(value, dict) or "model" not in value:
        raise ConfigError(
            "--generator must be a model name or a mapping with a model, e.g. "
            "'{model: Qwen/Qwen-Image, dtype: bfloat16}'"
        )
    return value


@index_group.command("imagine")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--captioner", required=True, help="Model name or YAML spec {backend:, model:}.")
@click.option("--generator", required=True, help="Text-to-image pipeline: name or {model:, ...}.")
@click.option("--caption-prompt", default="thorough", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--prompt", default="caption", show_default=True, help="Drawing prompt (imagine).")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--guidance", type=float, default=None, help="guidance_scale (pipeline default).")
@click.option("--true-cfg", type=float, default=None, help="true_cfg_scale (Qwen-Image).")
@click.option("--negative-prompt", default=None, help='Negative prompt (Paracosm: " ").')
@click.option("--width", type=click.IntRange(min=16), default=None)
@click.option("--height", type=click.IntRange(min=16), default=None)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--name", default="twins", show_default=True, help="Sidecar name.")
@click.option("--cache/--no-cache", default=True, show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--device", default=None, help="Device for the encoder (cuda, cpu).")
@click.option("--progress/--no-progress", default=True)
def imagine_command(index_dir: str, captioner: str, generator: str, **options: Any) -> None:
    """Draw a synthetic twin of every image of the index at INDEX_DIR (Paracosm).

    Each image is captioned in detail, the caption is drawn with the text-to-image
    --generator, and the twin's embedding (by the index's encoder) is saved as the sidecar
    --name, which the `twins` scoring rule reads. Work is written shard by shard to
    INDEX_DIR/<name>.build, so an interrupted run resumes where it stopped.
    """
    from cir.cli.index_caption import _cache
    from cir.context import Context
    from cir.index import GalleryIndex
    from cir.models.shared import resolve_encoder
    from cir.twins import imagine_twins

    captioning = _captioning(captioner, options)
    drawing = _drawing(generator, options)
    index = GalleryIndex.load(index_dir, device=options["device"], mmap=False)
    cache = _cache() if options["cache"] else None
    ctx = Context(index=index, cache=cache, device=options["device"], progress=True)
    encoder = resolve_encoder(ctx, "index imagine", None)
    summary = imagine_twins(
        index,
        Path(index_dir),
        captioning,
        drawing,
        encoder,
        ctx,
        name=options["name"],
        shard_size=options["shard_size"],
        resume=options["resume"],
        progress=options["progress"],
    )
    details = ", ".join(f"{k} {v}" for k, v in summary.items())
    click.echo(f"sidecar {options['name']!r} saved in {index_dir}: {details}")


def _captioning(spec: str, options: dict[str, Any]):
    from cir.stages.caption import Caption

    return Caption(
        captioner=parse_captioner(spec),
        prompt=options["caption_prompt"],
        max_tokens=options["max_tokens"],
    )


def _drawing(spec: str, options: dict[str, Any]):
    from cir.stages.imagine import Imagine

    settings = ("steps", "guidance", "true_cfg", "negative_prompt", "width", "height", "seed")
    return Imagine(
        generator=parse_generator(spec),
        task="text",
        prompt=options["prompt"],
        batch_size=options["batch_size"],
        **{name: options[name] for name in settings},
    )
