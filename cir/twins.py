"""Gallery twins: a picture drawn from each gallery image's detailed caption, as an index sidecar.

Pictures a model draws differ from photos; Paracosm (Wang, Zhao and Kong, Generating a Paracosm
for Training-Free Zero-Shot Composed Image Retrieval, arXiv 2602.00813) closes that gap by giving
every gallery image a synthetic twin: a captioner describes the image in detail, a text-to-image
model draws the description, and the gallery image is searched as ``V(image) + V(twin)`` (the
``twins`` rule of ``retrieve``). :func:`imagine_twins` makes the sidecar ``twins``: one normalised
twin embedding per gallery image (by the index's encoder), with the caption and the twin's cache
key per row (the picture itself is in the content cache, as PNG).

The work goes shard by shard into ``<index>/<name>.build/``: a run that is interrupted resumes
from its finished shards (captions and pictures already in the content cache are not made again
either); the sidecar is saved with the index at the end and the shards are removed.

Example:
    >>> captioner = Caption(captioner={"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"},
    ...                     prompt="thorough", max_tokens=256)
    >>> drawer = Imagine(task="text", prompt="caption", generator={"model": "Qwen/Qwen-Image"},
    ...                  true_cfg=4.0, negative_prompt=" ", width=512, height=512, seed=42)
    >>> imagine_twins(index, "my_index", captioner, drawer, encoder, ctx)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from tqdm.auto import tqdm

from cir.context import Context
from cir.errors import DataError
from cir.gallery_captions import _image_path
from cir.index.store import write_atomic, write_json
from cir.params import params_to_dict

SIDECAR = "twins"
STATE = "state.json"


class TwinsInterrupted(RuntimeError):
    """Raised by the ``interrupt_after_shards`` hook, to test resuming."""


def imagine_twins(
    index: Any,
    index_dir: str | Path,
    captioner: Any,
    drawer: Any,
    encoder: Any,
    ctx: Context | None = None,
    name: str = SIDECAR,
    shard_size: int = 256,
    resume: bool = True,
    progress: bool = False,
    interrupt_after_shards: int | None = None,
) -> dict[str, int]:
    """Give every image of ``index`` a synthetic twin and save the sidecar ``name`` with it.

    Args:
        index: a ``GalleryIndex`` built from image files (it needs their paths).
        index_dir: the index folder (the index is saved there; shards go to ``<name>.build``).
        captioner: a ``caption`` stage (its first caption of each image is drawn).
        drawer: an ``imagine`` stage with ``task: text`` and a prompt on ``caption``.
        encoder: the index's encoder.
        ctx: the stages' context (content cache, resources); a default one when None.
        shard_size: images per shard (a resumed run redoes at most one shard).
        resume: continue from the shards of an interrupted run with the same settings.
        interrupt_after_shards: testing hook: stop with :class:`TwinsInterrupted` after this
            many new shards.

    Returns:
        ``{"images": N, "resumed": R, "shards": S}`` (R images read from earlier shards).
    """
    ctx = ctx or Context(index=index)
    index.check_encoder(encoder.identity.key)
    _prepare(captioner, drawer, ctx)
    identity = _identity(captioner, drawer, encoder)
    work = Path(index_dir) / f"{name}.build"
    done = _start(work, identity, resume)
    todo = [gid for gid in index.ids if gid not in done]
    written = 0
    with tqdm(total=len(index), initial=len(index) - len(todo), disable=not progress) as bar:
        for start in range(0, len(todo), shard_size):
            ids = todo[start : start + shard_size]
            done.update(_twin_shard(index, ids, captioner, drawer, encoder, ctx))
            _write_shard(work, ids, done)
            bar.update(len(ids))
            written += 1
            if interrupt_after_shards == written:
                raise TwinsInterrupted(f"stopped after {written} shards (testing hook)")
    _attach(index, name, done, identity)
    index.save(index_dir)
    shutil.rmtree(work, ignore_errors=True)
    return {"images": len(index), "resumed": len(index) - len(todo), "shards": written}


def _twin_shard(index, ids, captioner, drawer, encoder, ctx) -> dict[str, tuple]:
    """Caption, draw and embed one shard: ``{id: (caption, picture key, embedding)}``."""
    paths = [_image_path(index, gid) for gid in ids]
    captions = [texts[0] for texts in captioner.caption_images(paths, ctx)]
    prompts = [drawer.prompt.render(caption=caption) for caption in captions]
    drawn = drawer.draw_pictures(prompts, [None] * len(ids), ctx)
    rows = encoder.encode_images([d.image for d in drawn], normalize=True)
    return {
        gid: (caption, d.key, row)
        for gid, caption, d, row in zip(ids, captions, drawn, rows, strict=True)
    }


def _prepare(captioner: Any, drawer: Any, ctx: Context) -> None:
    """Load both models and check the drawing settings before any work starts."""
    drawer.setup(ctx)
    drawer.generator_model.check(["text"], drawer.params.rendering)
    captioner.setup(ctx)


def _identity(captioner: Any, drawer: Any, encoder: Any) -> dict[str, Any]:
    """What the twins depend on; a resumed run must match it."""
    return {
        "encoder": encoder.identity.key,
        "captioner": params_to_dict(captioner.params),
        "drawer": params_to_dict(drawer.params),
    }


def _start(work: Path, identity: dict[str, Any], resume: bool) -> dict[str, tuple]:
    state = work / STATE
    if resume and state.is_file():
        if _read_state(state) != identity:
            raise DataError(
                f"{work} holds an unfinished twins build made with other settings (captioner, "
                "generator, drawing settings or encoder); use the same ones, or --no-resume to "
                "start over"
            )
        return _read_shards(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(state, identity)
    return {}


def _read_state(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is damaged ({exc}); run again with --no-resume") from None


def _read_shards(work: Path) -> dict[str, tuple]:
    done: dict[str, tuple] = {}
    for meta_path in sorted(work.glob("shard-*.json")):
        try:
            meta = json.loads(meta_path.read_text())
            rows = load_tensors(meta_path.with_suffix(".safetensors").read_bytes())["twins"]
            for n, gid in enumerate(meta["ids"]):
                done[gid] = (meta["captions"][n], meta["keys"][n], rows[n])
        except Exception as exc:  # json, safetensors and file errors: the shard is damaged
            raise DataError(
                f"{meta_path} is damaged ({type(exc).__name__}: {exc}); run again with "
                "--no-resume to start the twins over"
            ) from None
    return done


def _write_shard(work: Path, ids: list[str], done: dict[str, tuple]) -> None:
    """Tensors first, the shard's json last: a shard without its json is not read back."""
    stem = work / f"shard-{len(list(work.glob('shard-*.json'))):05d}"
    rows = torch.stack([done[gid][2] for gid in ids]).to(torch.float16)
    write_atomic(stem.with_suffix(".safetensors"), save_tensors({"twins": rows}))
    meta = {"ids": ids, "captions": [done[g][0] for g in ids], "keys": [done[g][1] for g in ids]}
    write_json(stem.with_suffix(".json"), meta)


def _attach(index: Any, name: str, done: dict[str, tuple], identity: dict[str, Any]) -> None:
    missing = [gid for gid in index.ids if gid not in done]
    if missing:
        raise DataError(f"no twin for {len(missing)} gallery images (e.g. {missing[:3]})")
    rows = torch.stack([done[gid][2] for gid in index.ids]).to(torch.float16)
    meta = {"kind": "gallery_twins", **identity}
    per_row = {
        "captions": [[done[gid][0]] for gid in index.ids],
        "keys": [done[gid][1] for gid in index.ids],
    }
    index.set_sidecar(name, rows, meta, per_row)
