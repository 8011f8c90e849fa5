"""``cir demo``: the Gradio page over a gallery index (or a folder, indexed first)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import click

from cir.cli._common import compute_option, device_option, overrides_option
from cir.errors import ConfigError, DataError

BASIC_PIPELINES = ("clip_fusion", "image_only", "text_only")
_DEMO_PACKAGE = "cir_demo"


@click.command("demo")
@click.option("--index", "index_dir", type=click.Path(), default=None, help="Index folder.")
@click.option(
    "--gallery", type=click.Path(), default=None, help="Image folder: index it first, then serve."
)
@click.option("--model", default=None, help="Encoder for --gallery (default: cir's default CLIP).")
@click.option("--pretrained", default=None, help="open_clip weights tag for --model.")
@click.option(
    "--index-out",
    type=click.Path(),
    default=None,
    help="Where --gallery's index is kept (default: under the cir cache folder).",
)
@click.option("--rebuild", is_flag=True, help="Re-index --gallery even if an index is there.")
@click.option(
    "--pipeline",
    "pipelines",
    multiple=True,
    help="Pipeline name or YAML path to offer (repeatable; the first is preselected). "
    "clip_fusion, image_only and text_only are always offered.",
)
@click.option("--all-pipelines", is_flag=True, help="Offer every shipped pipeline.")
@overrides_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True)
@click.option("--share", is_flag=True, help="Also publish a public gradio.live link (off).")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Another host name the page may be reached under (repeatable; '*' allows any). "
    "By default only this machine's own names are answered.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Queries that run at the same time; others wait in the queue.",
)
@click.option("--max-upload-mb", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--cache-dir", type=click.Path(), default=None, help="Content cache folder.")
@click.option("--no-cache", is_flag=True, help="Do not cache captions, LLM answers, embeddings.")
@device_option
@compute_option
def demo_command(
    index_dir: str | None,
    gallery: str | None,
    model: str | None,
    pretrained: str | None,
    index_out: str | None,
    rebuild: bool,
    pipelines: tuple[str, ...],
    all_pipelines: bool,
    overrides: tuple[str, ...],
    host: str,
    port: int,
    share: bool,
    allowed_hosts: tuple[str, ...],
    concurrency: int,
    max_upload_mb: float,
    cache_dir: str | None,
    no_cache: bool,
    device: str | None,
    compute: str,
) -> None:
    """Open the demo page: search INDEX (or a --gallery folder) with any pipeline, see every stage.

    \b
    Examples:
      cir demo --index my_index
      cir demo --gallery ~/Pictures --model ViT-B-32/openai
      cir demo --index my_index --pipeline cirevl \
        --set stages.recompose.llm.model=Qwen/Qwen2.5-1.5B-Instruct
    """
    if (index_dir is None) == (gallery is None):
        raise ConfigError("give exactly one of --index DIR (an index) or --gallery FOLDER (images)")
    from cir.index.compute import check_compute

    check_compute(compute)
    demos = load_demo_package()
    from cir.cache import ContentCache

    index = _open_index(index_dir, gallery, model, pretrained, index_out, rebuild, device)
    index.set_compute(compute)
    demos.safety.check_gallery_root(index.root)
    offered = _offered_pipelines(pipelines, all_pipelines)
    cache = None if no_cache else ContentCache(cache_dir)
    engine = demos.engine.DemoEngine(index, offered, overrides, cache=cache, device=device)
    click.echo(f"loading the models of {engine.default_pipeline} ...", err=True)
    seconds = engine.warm_up()
    click.echo(f"models ready in {seconds:.1f} s", err=True)
    app = demos.app.build_app(index, engine=engine, concurrency=concurrency)
    click.echo(f"serving {len(index)} images on http://{host}:{port} (Ctrl-C to stop)", err=True)
    demos.app.launch_app(
        app,
        host=host,
        port=port,
        share=share,
        max_upload_bytes=int(max_upload_mb * 1e6),
        allowed_hosts=allowed_hosts,
    )


def load_demo_package() -> ModuleType:
    """Import the demo app (``demos/`` of the source tree, or the copy shipped in the wheel).

    Raises:
        ConfigError: Gradio is not installed (it is the ``[demo]`` extra).
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the demo needs Gradio, which is not installed; "
            'install it with: pip install "cir[demo]"'
        ) from None
    if _DEMO_PACKAGE not in sys.modules:
        from cir._paths import shipped_dir

        try:
            folder = shipped_dir("demos")
        except FileNotFoundError:
            raise ConfigError(
                "the demo app files (demos/) are missing from this installation; reinstall cir"
            ) from None
        spec = importlib.util.spec_from_file_location(
            _DEMO_PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[_DEMO_PACKAGE] = package
        spec.loader.exec_module(package)
    for name in ("engine", "app", "safety"):
        importlib.import_module(f"{_DEMO_PACKAGE}.{name}")
    return sys.modules[_DEMO_PACKAGE]


def _offered_pipelines(given: tuple[str, ...], everything: bool) -> list[str]:
    from cir.pipeline import list_pipelines

    offered = list(given) + list(BASIC_PIPELINES)
    if everything:
        offered += list_pipelines()
    return list(dict.fromkeys(offered))


def _open_index(index_dir, gallery, model, pretrained, index_out, rebuild, device):
    from cir.index import GalleryIndex

    if index_dir is not None:
        if model is not None or pretrained is not None:
            raise ConfigError("--model applies to --gallery; an index keeps its own encoder")
        return GalleryIndex.load(index_dir, device=device)
    return _index_gallery(Path(gallery), model, pretrained, index_out, rebuild, device)


def _index_gallery(folder, model, pretrained, index_out, rebuild, device):
    """Index ``folder`` (or reuse the index already built for it with the same encoder)."""
    from cir.index import GalleryIndex
    from cir.index.build import scan
    from cir.models import DEFAULT_ENCODER, load_encoder

    if not folder.is_dir():
        raise DataError(f"--gallery {folder} is not a folder of images")
    model = model or DEFAULT_ENCODER
    out = Path(index_out) if index_out else _default_index_dir(folder, model, pretrained)
    encoder = load_encoder(model, pretrained=pretrained, device=device)  # freed after the build
    if not rebuild:
        existing = _reusable_index(out, folder, encoder.identity.key, scan)
        if existing is not None:
            click.echo(f"reusing the index in {out} (--rebuild to index again)", err=True)
            return existing
    click.echo(f"indexing {folder} with {encoder.identity.key} into {out}", err=True)
    started = time.perf_counter()
    index = GalleryIndex.build(folder, encoder, out=out, num_workers=0, progress=True)
    click.echo(
        f"indexed {len(index)} images in {time.perf_counter() - started:.1f} s"
        + (f" ({len(index.skipped)} unreadable files skipped)" if index.skipped else ""),
        err=True,
    )
    return index


def _default_index_dir(folder: Path, model: str, pretrained: str | None) -> Path:
    from cir.cache import default_cache_dir

    text = f"{folder.resolve()}|{model}|{pretrained}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha1(text).hexdigest()[:12]
    return default_cache_dir() / "demo-indexes" / f"{folder.resolve().name}-{digest}"


def _reusable_index(out: Path, folder: Path, encoder_key: str, scan):
    from cir.index import GalleryIndex

    if not (out / "manifest.json").is_file():
        return None
    try:
        index = GalleryIndex.load(out)
    except DataError:
        return None
    _, items = scan(folder)
    skipped = {str(entry.get("path")) for entry in index.skipped}
    readable = {it.id for it in items if it.location not in skipped}
    return index if index.encoder_key == encoder_key and readable == set(index.ids) else None


COMMANDS = [demo_command]
