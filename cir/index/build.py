"""Encode an image folder into a GalleryIndex: DataLoader workers decode, the model eats batches.

Images and ids come from :mod:`cir.index.scan` (ids are paths relative to the gallery folder,
``shoes/red.jpg``; any file name round-trips). Encoded rows are written to
``<out>/build/shard-NNNNN.*`` as the build goes; a build that is interrupted (killed, crashed,
Ctrl-C) is resumed by running it again with ``resume=True``: images of complete shards whose file
size and modification time are unchanged are not encoded again. When every image is done the index
is saved atomically into ``out`` and the shards are removed.

Unreadable files (missing, empty, not an image, truncated or corrupt, oversized) are skipped and
listed in ``idx.skipped`` / ``<out>/skipped.json`` with what the scan could not look at (folders
that cannot be read, dangling links, link loops); the build never aborts on one bad file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cir import ray_engine
from cir.errors import DataError
from cir.images import load_image
from cir.index import store
from cir.index.folder import BUILD_DIR, FolderLock, claim
from cir.index.gallery import GalleryIndex
from cir.index.scan import Item, find_images, scan

__all__ = ["BuildInterrupted", "Item", "build_index", "clear_work", "scan"]

STATE = "state.json"
_WORK_FILE = re.compile(r"^\.?(state\.json|shard-\d{5}\.(json|safetensors))(\.tmp-\d+)?$")


class BuildInterrupted(RuntimeError):
    """Raised by the ``interrupt_after_shards`` hook, to test resuming a build."""


class _Images(Dataset):
    """Decodes and preprocesses in worker processes; bad files come back as their reason.

    Images are decoded no larger than ``min_side`` needs (twice the model's input side): a
    144-megapixel photo then costs a fraction of its full decoded size.
    """

    def __init__(self, items: list[Item], preprocess: Any, max_pixels: int | None) -> None:
        self.items, self.preprocess, self.max_pixels = items, preprocess, max_pixels
        self.min_side = _input_side(preprocess)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, n: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = load_image(self.items[n].location, self.max_pixels, self.min_side)
            return n, self.preprocess(image), None
        except DataError as exc:
            return n, None, str(exc).removeprefix(f"{self.items[n].location}: ")
        except Exception as exc:  # a preprocessing failure on one file must not stop the build
            return n, None, f"cannot preprocess ({type(exc).__name__}: {exc})"


def _input_side(preprocess: Any) -> int | None:
    """Twice the longer side of the model's input, read off one preprocessed blank image."""
    from PIL import Image

    try:
        shape = preprocess(Image.new("RGB", (64, 64))).shape
    except Exception:  # an unusual transform: decode at full size
        return None
    return 2 * int(max(shape[-2:]))


def _collate(batch: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(n, t) for n, t, err in batch if err is None]
    bad = [(n, err) for n, _, err in batch if err is not None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [n for n, _ in good], pixels, bad


def build_index(
    source: str | Path | Sequence[str | Path],
    encoder: Any,
    out: str | Path,
    batch_size: int = 64,
    num_workers: int = 2,
    shard_size: int = 2048,
    resume: bool = True,
    dtype: str = "fp16",
    max_pixels: int | None = None,
    device: str | None = None,
    progress: bool = True,
    interrupt_after_shards: int | None = None,
    ray: bool | str | None = None,
    ray_workers: int | None = None,
) -> GalleryIndex:
    """Encode a gallery into an index saved in ``out``.

    Args:
        source: a folder (searched recursively) or a list of image paths; webdataset ``.tar``
            and parquet shards among them count for the images inside (:mod:`cir.index.shards`).
        encoder: an encoder from :func:`cir.models.load_encoder`, or a model name for it.
        out: the index folder (shards go to ``out/build`` while building).
        batch_size: images per model call.
        num_workers: DataLoader worker processes that decode and preprocess (0: in process).
        shard_size: images per shard (a resumed build redoes at most one shard).
        resume: reuse complete shards of an interrupted build in ``out``.
        dtype: storage dtype of the index (``fp16``, ``bf16``, ``fp32``).
        max_pixels: skip images larger than this (default :data:`cir.images.DEFAULT_MAX_PIXELS`).
        device: device for a model given by name.
        progress: show a progress bar.
        interrupt_after_shards: testing hook: stop with :class:`BuildInterrupted` after this
            many new shards.
        ray: encode on a Ray cluster (``True`` for a local one, or its address, ``"auto"``);
            the shards, resuming and the saved index are the same as a local build's (see
            :mod:`cir.index.ray_build`). Needs ``pip install 'cir[ray]'``.
        ray_workers: encoder actors on Ray (default: one per GPU, else one per spare CPU).

    Raises:
        DataError: missing or empty folder, or no readable image at all.
        ConfigError: ``ray`` is asked for but Ray is not installed or not reachable.
    """
    if isinstance(encoder, str):
        from cir.models import load_encoder

        encoder = load_encoder(encoder, device=device)
    if batch_size < 1 or num_workers < 0 or shard_size < 1:
        raise DataError("batch_size and shard_size must be >= 1 and num_workers >= 0")
    options = {
        "batch_size": batch_size,
        "workers": num_workers,
        "shard_size": shard_size,
        "max_pixels": max_pixels,
        "progress": progress,
        "interrupt_after_shards": interrupt_after_shards,
        "ray": ray,
        "device": device,
    }
    if ray_engine.wanted(ray):
        ray_engine.connect(ray)  # no Ray: a clear error before the folder is touched
        options["workers"] = ray_workers
    root, items, problems = find_images(source)
    folder = Path(out)
    with FolderLock(folder, wait=0, what="build"):
        claim(folder)
        return _build(folder, (root, items, problems), encoder, resume, dtype, options)


def _build(folder, found, encoder, resume, dtype, options) -> GalleryIndex:
    root, items, problems = found
    work = folder / BUILD_DIR
    done, skipped = _start(work, encoder, resume)
    todo = [it for it in items if it.location not in done and it.location not in skipped]
    shards = _Shards(work, len(list(work.glob("shard-*.json"))), dtype)
    bar = tqdm(
        total=len(items),
        initial=len(items) - len(todo),
        disable=not options["progress"],
        unit="img",
        desc="encoding gallery",
    )
    if ray_engine.wanted(options["ray"]):
        from cir.index import ray_build

        ray_build.encode(todo, encoder, shards, bar, options)
    else:
        _encode_locally(todo, encoder, shards, bar, options)
    shards.flush()
    bar.close()
    return _finish(folder, root, items, problems, encoder, dtype)


def _encode_locally(todo: list[Item], encoder: Any, shards: _Shards, bar: Any, options) -> None:
    batch_size = options["batch_size"]
    loader = DataLoader(
        _Images(todo, encoder.preprocess, options["max_pixels"]),
        batch_size=batch_size,
        num_workers=options["workers"],
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available() and str(getattr(encoder, "device", "")) != "cpu",
        persistent_workers=False,
    )
    per_shard = max(1, round(options["shard_size"] / batch_size))
    for step, (good, pixels, bad) in enumerate(loader, start=1):
        if pixels is not None:
            shards.add_rows([todo[n] for n in good], encoder.encode_pixels(pixels))
        shards.add_skips([(todo[n], reason) for n, reason in bad])
        bar.update(len(good) + len(bad))
        stop = options["interrupt_after_shards"]
        if step % per_shard == 0 and shards.flush() and stop == shards.written:
            raise BuildInterrupted(f"stopped after {shards.written} shards (testing hook)")


def _start(work: Path, encoder: Any, resume: bool) -> tuple[dict, dict]:
    """Prepare ``work``; return the rows and skips of complete shards when resuming."""
    identity = {**encoder.identity.to_dict(), "key": encoder.identity.key}
    state_path = work / STATE
    if resume and state_path.is_file():
        previous = _read_state(state_path)
        if previous.get("key") != identity["key"] or previous.get("preprocessing") != identity.get(
            "preprocessing"
        ):
            raise DataError(
                f"{work.parent} holds an unfinished build made with {previous.get('key')!r} "
                f"({previous.get('preprocessing')}), not {identity['key']!r} "
                f"({identity.get('preprocessing')}); use the same model, another --out, "
                "or --no-resume to start over"
            )
        return _read_shards(work)
    clear_work(work)
    work.mkdir(parents=True, exist_ok=True)
    store.write_json(state_path, {"encoder": identity})
    return {}, {}


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
        encoder = state["encoder"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        encoder = None
    if not isinstance(encoder, dict):
        raise DataError(
            f"{path} (the state of an unfinished build) is damaged; "
            "start the build over with --no-resume (resume=False)"
        )
    return encoder


def clear_work(work: Path) -> None:
    """Delete the files a build writes into ``work`` (and ``work`` if nothing else is left)."""
    if not work.is_dir():
        return
    for path in work.iterdir():
        if _WORK_FILE.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        work.rmdir()


def _read_shards(work: Path) -> tuple[dict, dict]:
    """Rows and skips of the complete shards in ``work``; a damaged shard is encoded again."""
    done: dict[str, tuple[Item, torch.Tensor]] = {}
    skipped: dict[str, tuple[Item, str]] = {}
    for meta_path in sorted(work.glob("shard-*.json")):
        try:
            rows, entries, skips = _read_shard(work, meta_path)
        except (OSError, ValueError, RecursionError, KeyError, TypeError, DataError):
            continue
        for n, item in enumerate(entries):
            if _unchanged(item):
                done[item.location] = (item, rows[n])
        for item, reason in skips:
            if _unchanged(item):
                skipped[item.location] = (item, reason)
    return done, skipped


def _read_shard(work: Path, meta_path: Path):
    meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    if not _WORK_FILE.match(meta["tensors"]):
        raise ValueError(f"shard names tensor file {meta['tensors']!r}")
    rows = store._load_tensors(work / meta["tensors"], mmap=True)["embeddings"]
    entries = [Item(**entry) for entry in meta["rows"]]
    skips = [(Item(**entry["item"]), str(entry["reason"])) for entry in meta["skipped"]]
    if len(entries) != len(rows):
        raise ValueError("shard rows and tensor rows differ")
    return rows, entries, skips


def _unchanged(item: Item) -> bool:
    try:
        st = os.stat(item.path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (item.size, item.mtime_ns)


class _Shards:
    """Collects encoded rows and skips; each flush writes one shard (tensors first, json last)."""

    def __init__(self, work: Path, existing: int, dtype: str) -> None:
        self.work, self.next, self.written, self.dtype = work, existing, 0, dtype
        self.items: list[Item] = []
        self.rows: list[torch.Tensor] = []
        self.skips: list[tuple[Item, str]] = []

    def add_rows(self, items: list[Item], rows: torch.Tensor) -> None:
        self.items.extend(items)
        self.rows.append(rows.to(store.DTYPES[self.dtype]))

    def add_skips(self, skips: list[tuple[Item, str]]) -> None:
        self.skips.extend(skips)

    def flush(self) -> bool:
        if not self.items and not self.skips:
            return False
        name = f"shard-{self.next:05d}"
        rows = torch.cat(self.rows) if self.rows else torch.empty(0, 0)
        store._save_tensors(self.work / f"{name}.safetensors", {"embeddings": rows})
        meta = {
            "tensors": f"{name}.safetensors",
            "rows": [vars(it) for it in self.items],
            "skipped": [{"item": vars(it), "reason": r} for it, r in self.skips],
        }
        store.write_json(self.work / f"{name}.json", meta)
        self.items, self.rows, self.skips = [], [], []
        self.next += 1
        self.written += 1
        return True


def _finish(
    folder: Path, root: Path, items: list[Item], problems: list, encoder: Any, dtype: str
) -> GalleryIndex:
    work = folder / BUILD_DIR
    done, skipped = _read_shards(work)
    good = [it for it in items if it.location in done]
    report = [
        {"path": it.location, "reason": skipped[it.location][1]}
        for it in items
        if it.location in skipped
    ]
    report += [
        {"path": it.location, "reason": "changed or vanished during the build"}
        for it in items
        if it.location not in done and it.location not in skipped
    ]
    if not good:
        reasons = "; ".join(f"{Path(r['path']).name}: {r['reason']}" for r in report[:5])
        raise DataError(f"no readable image among the {len(items)} files under {root} ({reasons})")
    emb = torch.stack([done[it.location][1] for it in good]).to(store.DTYPES[dtype])
    idx = GalleryIndex(
        [it.id for it in good], emb, encoder.identity, [it.id for it in good], root, device="cpu"
    )
    idx.skipped = report + problems
    idx.save(folder)
    clear_work(work)
    return GalleryIndex.load(folder)
