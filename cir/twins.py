"""Gallery twins: a picture drawn from each gallery image's detailed caption, as an index sidecar.

Pictures a model draws differ from photos; Paracosm (Wang, Zhao and Kong, Generating a Paracosm
for Training-Free Zero-Shot Composed Image Retrieval, arXiv 2602.00813) closes that gap by giving
every gallery image a synthetic twin: a captioner describes the image in detail, a text-to-image
model draws the description, and the gallery image is searched as ``V(image) + V(twin)`` (the
``twins`` rule of ``retrieve``). :func:`imagine_twins` makes the sidecar ``twins``: one normalised
twin embedding per gallery image (by the index's encoder), with the caption and the twin's cache
key per row (the picture itself is in the content cache, as PNG).

Like a pipeline run it goes model by model: every image is captioned first, the captioner is
released, then every caption is drawn and embedded, so the two models are never loaded together.
Both passes write shards into ``<index>/<name>.build/``; an interrupted run resumes from its
finished shards (captions and pictures already in the content cache are not made again either).
The sidecar is saved with the index at the end and the shards are removed.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from tqdm.auto import tqdm

from cir.context import Context
from cir.diffusion import check_generator
from cir.errors import DataError
from cir.gallery_captions import _image_path
from cir.index.store import write_atomic, write_json
from cir.params import params_to_dict

SIDECAR = "twins"
STATE = "state.json"
_RUN_ONLY = {"batch_size", "chunk_size"}
"""Parameters that change how fast twins are made, not what they are (a resume may change them)."""


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
        ``{"images": N, "captions_resumed": C, "twins_resumed": T, "shards": S}``: what earlier
        shards held, and the shards this run wrote.
    """
    ctx = ctx or Context(index=index)
    index.check_encoder(encoder.identity.key)
    check_generator(drawer.params.generator)  # a wrong generator fails before any captioning
    identity = _identity(captioner, drawer, encoder)
    work = Path(index_dir) / f"{name}.build"
    captions, twins = _start(work, identity, resume)
    summary = {"images": len(index), "captions_resumed": len(captions), "twins_resumed": len(twins)}
    build = _Build(index, ctx, work, shard_size, progress, interrupt_after_shards)
    build.caption(captioner, captions)
    build.draw(drawer, encoder, captions, twins)
    _attach(index, name, captions, twins, identity)
    index.save(index_dir)
    shutil.rmtree(work, ignore_errors=True)
    return {**summary, "shards": build.written}


class _Build:
    """The two passes over the gallery, shard by shard."""

    def __init__(self, index, ctx, work, shard_size, progress, stop_after) -> None:
        self.index, self.ctx, self.work, self.size = index, ctx, work, shard_size
        self.progress, self.stop_after, self.written = progress, stop_after, 0

    def caption(self, captioner: Any, captions: dict[str, str]) -> None:
        """Caption every image without one, then release the captioner."""
        for ids in self._shards(captions, "captions"):
            paths = [_image_path(self.index, gid) for gid in ids]
            new = [texts[0] for texts in captioner.caption_images(paths, self.ctx)]
            captions.update(zip(ids, new, strict=True))
            _write_captions(self.work, ids, new)
        _release(captioner, self.ctx)

    def draw(self, drawer: Any, encoder: Any, captions: dict, twins: dict) -> None:
        """Draw and embed every caption without a twin, then release the generator."""
        for ids in self._shards(twins, "twins"):
            if not hasattr(drawer, "generator_model"):
                drawer.setup(self.ctx)
                drawer.generator_model.check(["text"], drawer.params.rendering)
            prompts = [drawer.prompt.render(caption=captions[gid]) for gid in ids]
            drawn = drawer.draw_pictures(prompts, [None] * len(ids), self.ctx)
            rows = encoder.encode_images([d.image for d in drawn], normalize=True)
            twins.update((g, (d.key, r)) for g, d, r in zip(ids, drawn, rows, strict=True))
            _write_twins(self.work, ids, twins)
        _release(drawer, self.ctx)

    def _shards(self, done: dict, what: str) -> Iterator[list[str]]:
        todo = [gid for gid in self.index.ids if gid not in done]
        with tqdm(total=len(self.index), initial=len(self.index) - len(todo), desc=what,
                  disable=not self.progress) as bar:  # fmt: skip
            for start in range(0, len(todo), self.size):
                ids = todo[start : start + self.size]
                yield ids
                bar.update(len(ids))
                self.written += 1
                if self.written == self.stop_after:
                    raise TwinsInterrupted(f"stopped after {self.written} shards (testing hook)")


def _release(stage: Any, ctx: Context) -> None:
    """Free a stage's models before the next pass loads its own."""
    stage.teardown()
    ctx.resources.release_all(use.key for use in stage.models(ctx))


def _identity(captioner: Any, drawer: Any, encoder: Any) -> dict[str, Any]:
    """What the twins depend on; a resumed run must match it."""

    def settings(stage: Any) -> dict[str, Any]:
        return {k: v for k, v in params_to_dict(stage.params).items() if k not in _RUN_ONLY}

    return {
        "encoder": encoder.identity.key,
        "captioner": settings(captioner),
        "drawer": settings(drawer),
    }


def _start(work: Path, identity: dict[str, Any], resume: bool) -> tuple[dict, dict]:
    state = work / STATE
    if resume and state.is_file():
        if _read_json(state) != identity:
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
    return {}, {}


def _read_shards(work: Path) -> tuple[dict[str, str], dict[str, tuple]]:
    captions: dict[str, str] = {}
    twins: dict[str, tuple] = {}
    for path in sorted(work.glob("captions-*.json")):
        meta = _read_json(path)
        captions.update(zip(meta["ids"], meta["captions"], strict=True))
    for path in sorted(work.glob("twins-*.json")):
        meta = _read_json(path)
        try:
            rows = load_tensors(path.with_suffix(".safetensors").read_bytes())["twins"]
        except Exception as exc:  # safetensors and file errors: the shard is damaged
            raise DataError(f"{path} has damaged tensors ({exc}); run with --no-resume") from None
        twins.update((g, (k, r)) for g, k, r in zip(meta["ids"], meta["keys"], rows, strict=True))
    return captions, twins


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is damaged ({exc}); run again with --no-resume") from None


def _write_captions(work: Path, ids: list[str], captions: list[str]) -> None:
    path = work / f"captions-{len(list(work.glob('captions-*.json'))):05d}.json"
    write_json(path, {"ids": ids, "captions": captions})


def _write_twins(work: Path, ids: list[str], twins: dict[str, tuple]) -> None:
    """Tensors first, the shard's json last: a shard without its json is not read back."""
    stem = work / f"twins-{len(list(work.glob('twins-*.json'))):05d}"
    rows = torch.stack([twins[gid][1] for gid in ids]).to(torch.float16)
    write_atomic(stem.with_suffix(".safetensors"), save_tensors({"twins": rows}))
    write_json(stem.with_suffix(".json"), {"ids": ids, "keys": [twins[g][0] for g in ids]})


def _attach(index: Any, name: str, captions: dict, twins: dict, identity: dict) -> None:
    missing = [gid for gid in index.ids if gid not in twins]
    if missing:
        raise DataError(f"no twin for {len(missing)} gallery images (e.g. {missing[:3]})")
    rows = torch.stack([twins[gid][1] for gid in index.ids]).to(torch.float16)
    per_row = {
        "captions": [[captions[gid]] for gid in index.ids],
        "keys": [twins[gid][0] for gid in index.ids],
    }
    index.set_sidecar(name, rows, {"kind": "gallery_twins", **identity}, per_row)
