"""Benchmark gallery indexes: built once per (dataset, gallery, encoder), then reused.

An index lives in ``<cache>/indexes/<dataset>[-<part>]-<gallery hash>-<encoder hash>/index`` with
a ``bench.json`` naming the encoder (model, weights, preprocessing, dtype) and the hash of the
gallery listing (ids and paths). A later run with the same encoder over the same gallery loads it
instead of encoding again; an interrupted build resumes shard by shard. Index ids are the
benchmark's image ids (COCO ids, CIRR names, FashionIQ ASINs).

Example:
    >>> spec = EncoderSpec("ViT-L-14/openai", preprocessing="targetpad")
    >>> index, info = gallery_index("cirr", part, spec, Path("~/.cache/cir"))
    >>> info["reused"]
    True
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from cir.bench.datasets import Part
from cir.errors import DataError
from cir.models.spec import EncoderSpec
from cir.resources import Resources, default_resources

MARKER = "bench.json"


def gallery_fingerprint(part: Part) -> str:
    """sha256 of the gallery listing (id and path of every image, in order)."""
    digest = hashlib.sha256()
    for gid, path in part.gallery.items():
        digest.update(f"{gid}\t{path}\n".encode())
    return digest.hexdigest()


def index_folder(cache_root: Path, dataset: str, part: Part, encoder: EncoderSpec) -> Path:
    """``<cache>/indexes/<dataset>[-<part>]-<gallery hash>-<encoder hash>``: splits sharing a
    gallery (CIRCO's val and test both rank COCO unlabeled) share the index."""
    gallery = gallery_fingerprint(part)[:12]
    tag = hashlib.sha256(encoder.fingerprint().encode()).hexdigest()[:12]
    name = "-".join(x for x in (dataset, part.name, gallery, tag) if x)
    return Path(cache_root) / "indexes" / name


def gallery_index(
    dataset: str,
    part: Part,
    encoder: EncoderSpec,
    cache_root: Path,
    device: str | None = None,
    workers: int = 0,
    progress: bool = True,
    resources: Resources | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The part's gallery index (loaded when a matching one exists, else built) and facts
    about it for the manifest (folder, reused, encoder key, size, skipped images, seconds)."""
    from cir.index import GalleryIndex

    folder = index_folder(cache_root, dataset, part, encoder)
    fingerprint = gallery_fingerprint(part)
    marker = _read_marker(folder)
    started = time.perf_counter()
    reused = marker.get("encoder") == encoder.to_dict() and marker.get("gallery") == fingerprint
    if reused:
        index = GalleryIndex.load(folder / "index", device=device)
    else:
        resources = resources or default_resources
        index = _build(part, encoder, folder, device, workers, progress, resources)
        skipped = [s.get("path", str(s)) for s in index.skipped]
        _write_marker(folder, encoder, fingerprint, index.encoder_key, skipped)
        marker = _read_marker(folder)
    return index, {
        "folder": str(folder),
        "reused": reused,
        "encoder": encoder.to_dict(),
        "encoder_key": index.encoder_key,
        "images": len(index),
        "skipped": marker.get("skipped", []),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _build(part: Part, spec: EncoderSpec, folder: Path, device, workers, progress, resources):
    """Encode the gallery (with the encoder's preprocessing), then store it under the
    benchmark's ids."""
    from cir.index import GalleryIndex
    from cir.models.shared import shared_encoder

    encoder = shared_encoder(resources, spec, device)
    raw_dir = folder / "raw"
    raw = GalleryIndex.build(
        list(part.gallery.values()), encoder, out=raw_dir, num_workers=workers, progress=progress
    )
    by_path = {str(Path(p).resolve()): gid for gid, p in part.gallery.items()}
    ids = [by_path[str(raw.path(rid).resolve())] for rid in raw.ids]
    index = GalleryIndex.from_embeddings(
        ids,
        raw.embeddings,
        encoder=raw.encoder,
        paths=[raw.path(rid) for rid in raw.ids],
        dtype=raw.dtype,
        normalize=False,
        device=device,
    )
    index.skipped = raw.skipped
    if len(index) == 0:
        raise DataError(f"no gallery image of {part.name or 'the split'} could be read")
    index.save(folder / "index")
    shutil.rmtree(raw_dir, ignore_errors=True)
    return index


def _read_marker(folder: Path) -> dict[str, Any]:
    path = folder / MARKER
    if not path.is_file() or not (folder / "index").is_dir():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def _write_marker(folder: Path, encoder: EncoderSpec, fingerprint: str, key, skipped) -> None:
    data = {
        "encoder": encoder.to_dict(),
        "encoder_key": key,
        "gallery": fingerprint,
        "skipped": skipped,
    }
    (folder / MARKER).write_text(json.dumps(data, indent=2), encoding="utf-8")


def caption_galleries(
    pipe: Any,
    groups: list,
    infos: list[dict],
    ctx_args: dict[str, Any],
    release: bool = True,
    **ray_args: Any,
) -> None:
    """Give every gallery index the captions the pipeline's ``gallery_captions:`` declares
    (made once, saved with the cached index); what happened goes into each index's ``infos``.

    ``ctx_args`` are the run's ``Context`` fields (resources, cache, device, progress);
    ``ray_args`` (``ray``, ``ray_workers``) caption on a Ray cluster as the run asks. The
    captioner is released afterwards (with ``release``) unless a stage of the pipeline names it.
    """
    from cir.context import Context
    from cir.execution import model_schedule
    from cir.gallery_captions import ensure_gallery_captions
    from cir.models.shared import resolve_encoder

    spec = pipe.gallery_captions
    contexts = [Context(g.index, encoder=pipe.encoder, **ctx_args) for g in groups]
    for group, info, ctx in zip(groups, infos, contexts, strict=True):
        encoder = resolve_encoder(ctx, "gallery captions", None)
        folder = Path(info["folder"]) / "index"
        made = ensure_gallery_captions(group.index, spec, folder, ctx, encoder, **ray_args)
        info["gallery_captions"] = made
    if not release:
        return
    stage = spec.stage()
    used_later = model_schedule(pipe.stages, contexts)
    captioner = {use.key for ctx in contexts for use in stage.models(ctx)}
    ctx_args["resources"].release_all(k for k in captioner if k not in used_later)
