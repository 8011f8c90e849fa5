"""Gallery captions: K captions per gallery image and their text embeddings, as an index sidecar.

WeiMoCIR's caption-aware similarity (and the hubness bank) reads the sidecar ``captions``: a
(N, K, D) tensor of normalised text embeddings made by the index's encoder, with the caption
strings kept per row. Produce it with a captioner (batched, cached through the content cache,
resumable from a progress file) or import it from a file in the WeiMoCIR reference format,
a JSON list of ``{"candidate": id, "captions": [...]}``.

Example:
    >>> from cir.stages.caption import Caption
    >>> blip = {"backend": "transformers", "model": "Salesforce/blip-image-captioning-large"}
    >>> captioner = Caption(captioner=blip, num_captions=3, temperature=1.0, top_p=0.9)
    >>> caption_gallery(index, captioner, encoder, progress_file="my_index/captions.partial.jsonl")
    >>> import_gallery_captions(index, "captions.json", encoder)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cir import ray_engine, ray_stages
from cir.errors import ConfigError, DataError

SIDECAR = "captions"
#: The sidecar ``source`` prefix of captions a pipeline's ``gallery_captions:`` made.
MADE_BY_SECTION = "gallery_captions:"


def set_caption_sidecar(
    index: Any,
    captions: Sequence[Sequence[str]],
    encoder: Any,
    name: str = SIDECAR,
    source: str = "",
    batch_size: int = 256,
) -> None:
    """Encode K captions per gallery image and attach them to ``index`` as sidecar ``name``.

    Args:
        index: a ``GalleryIndex``.
        captions: one list of K captions per gallery row, in index order.
        encoder: the text encoder (``encode_texts``); it must be the index's encoder.
        name: sidecar name.
        source: where the captions came from (captioner spec or file), kept in the meta.
        batch_size: texts per encoder call.
    """
    if len(captions) != len(index):
        raise DataError(f"need captions for {len(index)} gallery images, got {len(captions)}")
    counts = {len(c) for c in captions}
    if len(counts) != 1 or 0 in counts:
        raise DataError(
            f"every gallery image needs the same number (>= 1) of captions; found counts "
            f"{sorted(counts)}"
        )
    index.check_encoder(encoder.identity.key)
    k = counts.pop()
    flat = [text for row in captions for text in row]
    emb = encoder.encode_texts(flat, batch_size=batch_size, normalize=True)
    tensor = emb.reshape(len(index), k, -1).to(torch.float16)
    meta = {"kind": "gallery_captions", "encoder": encoder.identity.key, "source": source, "k": k}
    index.set_sidecar(name, tensor, meta, {"captions": [list(c) for c in captions]})


def read_captions_file(path: str | Path) -> dict[str, list[str]]:
    """``{id: captions}`` from a JSON list of ``{"candidate": id, "captions": [...]}``."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"captions file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"captions file {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise DataError(
            f"captions file {str(path)!r} must hold a JSON list of "
            '{"candidate": id, "captions": [...]} objects'
        )
    out: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        caps = entry.get("captions") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or "candidate" not in entry
            or not isinstance(caps, list)
            or not all(isinstance(c, str) for c in caps)
        ):
            raise DataError(
                f"captions file {str(path)!r}, entry {i}: expected "
                f'{{"candidate": id, "captions": [strings]}}, got {str(entry)[:120]}'
            )
        out[str(entry["candidate"])] = list(caps)
    return out


def import_gallery_captions(
    index: Any, path: str | Path, encoder: Any, name: str = SIDECAR
) -> dict[str, int]:
    """Attach captions from a reference-format file; ids may be given without extensions.

    Every gallery image needs an entry (matched by id, or by file stem: ``"123.png"`` matches
    the entry ``"123"``). Entries for images the index does not hold are ignored and counted.

    Returns:
        ``{"images": N, "captions_per_image": K, "ignored_entries": E}``.
    """
    by_id = read_captions_file(path)
    stems = {Path(i).stem: i for i in by_id}
    rows, missing = [], []
    for gid in index.ids:
        key = gid if gid in by_id else stems.get(Path(gid).stem)
        if key is None:
            missing.append(gid)
        else:
            rows.append(by_id[key])
    if missing:
        raise DataError(
            f"captions file {str(path)!r} has no entry for {len(missing)} of {len(index)} gallery "
            f"images (e.g. {', '.join(missing[:3])}); the file must cover the whole gallery"
        )
    set_caption_sidecar(index, rows, encoder, name, source=f"file:{Path(path).name}")
    return {
        "images": len(rows),
        "captions_per_image": len(rows[0]),
        "ignored_entries": len(by_id) - len(rows),
    }


def caption_gallery(
    index: Any,
    captioner: Any,
    encoder: Any,
    ctx: Any = None,
    name: str = SIDECAR,
    batch_size: int = 64,
    progress_file: str | Path | None = None,
    progress: bool = False,
    source: str | None = None,
    ray: bool | str | None = None,
    ray_workers: int | None = None,
) -> dict[str, int]:
    """Caption every gallery image with a ``caption`` stage and attach the sidecar.

    Images are captioned ``batch_size`` at a time; after each batch the captions are appended
    to ``progress_file`` (JSON lines), so an interrupted run resumes where it stopped. With a
    content cache in ``ctx`` a repeated run reuses the cached captions.

    Args:
        index: a ``GalleryIndex`` built from image files (it needs their paths).
        captioner: a ``Caption`` stage (its ``num_captions`` is K).
        encoder: the index's text encoder.
        ctx: a stage ``Context`` (cache, resources); a default one over ``index`` when None.
        source: what made the captions, kept in the sidecar's meta (default: the captioner).
        ray: caption on a Ray cluster (``True`` for a local one, or its address) with a pool
            of captioner actors sharing the content cache (see :mod:`cir.ray_stages`); the
            captions equal a local run's.
        ray_workers: captioner actors on Ray (default: one per GPU, else per spare CPU).

    Returns:
        ``{"images": N, "captions_per_image": K, "resumed": R}`` (R rows read from progress).
    """
    from cir.context import Context

    ctx = ctx or Context(index=index)
    done = _read_progress(progress_file)
    resumed = sum(1 for gid in index.ids if gid in done)
    todo = [gid for gid in index.ids if gid not in done]
    paths = [_image_path(index, gid) for gid in todo]
    if ray_engine.wanted(ray):
        options = {"ray": ray, "workers": ray_workers}
        for n, captions in ray_stages.caption_paths(captioner, paths, ctx, batch_size, options):
            done[todo[n]] = captions
            _append_progress(progress_file, [todo[n]], [captions])
    else:
        _caption_locally(captioner, todo, paths, ctx, batch_size, progress, progress_file, done)
    rows = [done[gid] for gid in index.ids]
    if source is None:
        source = "captioner:" + json.dumps(captioner.params.captioner, sort_keys=True)
    set_caption_sidecar(index, rows, encoder, name, source=source)
    return {"images": len(rows), "captions_per_image": len(rows[0]), "resumed": resumed}


def _caption_locally(captioner, todo, paths, ctx, batch_size, progress, progress_file, done):
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="captions"):
        batch = todo[start : start + batch_size]
        captions = captioner.caption_images(paths[start : start + batch_size], ctx)
        done.update(zip(batch, captions, strict=True))
        _append_progress(progress_file, batch, captions)


def _image_path(index: Any, gid: str) -> Path:
    path = index.path(gid)
    if path is None:
        raise DataError(
            "the index keeps no image paths, so its images cannot be captioned; "
            "import captions from a file instead (--captions-file)"
        )
    return path


def _read_progress(path: str | Path | None) -> dict[str, list[str]]:
    if path is None or not Path(path).is_file():
        return {}
    done: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            done[entry["candidate"]] = entry["captions"]
    return done


def _append_progress(path: str | Path | None, ids: list[str], captions: list[list[str]]) -> None:
    if path is None:
        return
    with open(path, "a") as fh:
        for gid, caps in zip(ids, captions, strict=True):
            fh.write(json.dumps({"candidate": gid, "captions": caps}) + "\n")


@dataclasses.dataclass(frozen=True)
class GalleryCaptionSpec:
    """The gallery captions a pipeline needs (its ``gallery_captions:`` section): the params of
    the ``caption`` stage that writes them, the sidecar they go to, images per batch.

    ``cir bench run`` makes them on the benchmark's gallery index before the pipeline runs
    (once: the sidecar is saved with the cached index and reused while the spec is unchanged).

    Example:
        >>> GalleryCaptionSpec.from_config(
        ...     {"captioner": {"backend": "vllm", "model": "llava-hf/llava-v1.6-vicuna-7b-hf"},
        ...      "prompt": "imagescope", "max_tokens": 256})
    """

    params: dict[str, Any]
    sidecar: str = SIDECAR
    batch_size: int = 64

    @classmethod
    def from_config(cls, value: Any) -> GalleryCaptionSpec:
        if not isinstance(value, dict) or not isinstance(value.get("captioner"), dict):
            raise ConfigError(
                "`gallery_captions:` must be a mapping with a `captioner:` mapping (backend, "
                "model), the other `caption` stage params, and optionally `sidecar`, `batch_size`"
            )
        params = dict(value)
        spec = cls(params, params.pop("sidecar", SIDECAR), params.pop("batch_size", 64))
        if not isinstance(spec.batch_size, int) or spec.batch_size < 1:
            raise ConfigError(f"`gallery_captions.batch_size` must be >= 1, got {spec.batch_size}")
        spec.stage()  # the caption stage validates its params
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {**self.params, "sidecar": self.sidecar, "batch_size": self.batch_size}

    def stage(self) -> Any:
        """The ``caption`` stage that writes these captions."""
        from cir.stages.caption import Caption

        try:
            return Caption("gallery_captions", **self.params)
        except (TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"`gallery_captions:` {exc}") from None


def _made_by(stage: Any) -> str:
    """What identifies captions made by a ``gallery_captions:`` section: its stage's params."""
    return MADE_BY_SECTION + json.dumps(stage.to_dict().get("params", {}), sort_keys=True)


def ensure_gallery_captions(
    index: Any,
    spec: GalleryCaptionSpec,
    index_dir: str | Path,
    ctx: Any,
    encoder: Any,
    **ray_args: Any,
) -> dict[str, Any]:
    """Caption the gallery as ``spec`` says unless the saved index already holds those captions,
    or captions that did not come from a ``gallery_captions:`` section (imported with
    ``cir replay import`` or ``cir index caption``): those are the user's and are kept.

    The captions go through the content cache and a progress file beside the index (named by
    the spec, so a changed spec never resumes from another's captions); the index is saved
    with the sidecar; ``ray_args`` (``ray``, ``ray_workers``) caption on a Ray cluster. Returns
    what happened, for the run manifest.
    """
    index_dir = Path(index_dir)
    stage = spec.stage()
    source = _made_by(stage)
    if spec.sidecar in index.sidecars:
        present = str(index.sidecar(spec.sidecar)[1].get("source", ""))
        if present == source:
            return {"sidecar": spec.sidecar, "reused": True, "source": source}
        if not present.startswith(MADE_BY_SECTION):  # imported or made by hand: the user's
            return {"sidecar": spec.sidecar, "reused": True, "source": present, "kept": True}
    tag = hashlib.sha256(source.encode()).hexdigest()[:12]
    progress_file = index_dir.parent / f"{spec.sidecar}-{tag}.partial.jsonl"
    summary = caption_gallery(
        index, stage, encoder, ctx, spec.sidecar, spec.batch_size, progress_file,
        progress=ctx.progress, source=source, **ray_args,
    )  # fmt: skip
    index.save(index_dir)
    progress_file.unlink(missing_ok=True)
    return {"sidecar": spec.sidecar, "reused": False, "source": source, **summary}
