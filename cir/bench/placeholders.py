"""Miniature benchmark folders: real annotation entries, generated placeholder images.

The benchmark images are licensed separately and large; tests, docs and smoke runs use the
official annotation files cut down to a few queries, with small generated images saved under
the names the annotations use. The folder layout is the official one, so every reader, check
and runner code path is the real one.

Example:
    >>> root = make_miniature("cirr", "../shared/benchmarks/cirr", "/tmp/mini_cirr", n_queries=4)
    >>> get_dataset("cirr", root).first_missing("val")
    (None, ...)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw

from cir.bench.datasets import DATASETS, get_dataset
from cir.bench.datasets.cirr import SPLIT_FILES, VERSION
from cir.bench.datasets.fashioniq import CATEGORIES
from cir.bench.datasets.genecis import TASKS


def placeholder_image(name: str, size: int = 32) -> Image.Image:
    """A small image whose colours and pattern are a pure function of ``name``."""
    digest = hashlib.sha256(name.encode()).digest()
    image = Image.new("RGB", (size, size), tuple(digest[:3]))
    draw = ImageDraw.Draw(image)
    for i in range(4):
        x0, y0 = digest[3 + i] % size, digest[7 + i] % size
        box = (min(x0, size - 1), min(y0, size - 1), size - 1, size - 1)
        draw.rectangle(box, fill=tuple(digest[11 + 3 * i : 14 + 3 * i]))
    return image


def write_placeholder_images(paths: Iterable[Path], size: int = 32) -> int:
    """Write a placeholder image at each path that does not exist yet; returns how many."""
    written = 0
    for path in paths:
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        placeholder_image(path.stem, size).save(path)
        written += 1
    return written


def make_miniature(
    dataset: str,
    annotations_root: str | Path,
    out: str | Path,
    n_queries: int = 4,
    distractors: int = 8,
    splits: tuple[str, ...] = ("val", "test"),
    images: bool = True,
) -> Path:
    """Copy the first ``n_queries`` of each split (with the official layout) into ``out``.

    Galleries keep every image the kept queries refer to (references, targets, ground
    truths, group members) plus ``distractors`` other images of the real gallery. GeneCIS keeps
    the first ``n_queries`` templates of each task, i-CIR the instances of its first
    ``n_queries`` queries (with their whole databases), ZeroSight the first queries plus
    ``distractors`` invented images. Splits the benchmark does not have are skipped.
    With ``images``, placeholder images are written for the whole miniature gallery.
    """
    source, out = Path(annotations_root), Path(out)
    writer = _WRITERS[dataset]
    splits = tuple(s for s in splits if s in DATASETS[dataset].splits)
    for split in splits:
        writer(source, out, split, n_queries, distractors)
    if images:
        ds = get_dataset(dataset, out)
        for split in splits:
            write_placeholder_images(ds.image_files(split))
    return out


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _mini_circo(source: Path, out: Path, split: str, n: int, distractors: int) -> None:
    records = _load(source / "annotations" / f"{split}.json")[:n]
    _dump(out / "annotations" / f"{split}.json", records)
    info_path = out / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    ids = {im["id"] for im in _load(info_path)["images"]} if info_path.is_file() else set()
    for r in records:
        ids.add(r["reference_img_id"])
        ids.update(r.get("gt_img_ids", []))
    ids.update(900_000_000 + i for i in range(distractors))  # ids no COCO image uses
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in sorted(ids)]
    _dump(info_path, {"images": images})


def _mini_cirr(source: Path, out: Path, split: str, n: int, distractors: int) -> None:
    name = SPLIT_FILES[split]
    records = _load(source / "captions" / f"cap.{VERSION}.{name}.json")[:n]
    full = _load(source / "image_splits" / f"split.{VERSION}.{name}.json")
    keep = {m for r in records for m in r["img_set"]["members"]}
    keep |= {r["reference"] for r in records} | {
        r["target_hard"] for r in records if "target_hard" in r
    }
    keep |= set([k for k in full if k not in keep][:distractors])
    _dump(out / "captions" / f"cap.{VERSION}.{name}.json", records)
    _dump(
        out / "image_splits" / f"split.{VERSION}.{name}.json",
        {k: full[k] for k in full if k in keep},
    )


def _mini_fashioniq(source: Path, out: Path, split: str, n: int, distractors: int) -> None:
    for category in CATEGORIES:
        records = _load(source / "captions" / f"cap.{category}.{split}.json")[:n]
        full = _load(source / "image_splits" / f"split.{category}.{split}.json")
        keep = {r["candidate"] for r in records} | {r["target"] for r in records if "target" in r}
        keep |= set([k for k in full if k not in keep][:distractors])
        _dump(out / "captions" / f"cap.{category}.{split}.json", records)
        _dump(
            out / "image_splits" / f"split.{category}.{split}.json", [k for k in full if k in keep]
        )


def _mini_genecis(source: Path, out: Path, split: str, n: int, distractors: int) -> None:
    for task in TASKS:
        if (source / f"{task}.json").is_file():
            _dump(out / f"{task}.json", _load(source / f"{task}.json")[:n])


def _mini_icir(source: Path, out: Path, split: str, n: int, distractors: int) -> None:
    rows = {}
    for name in ("query_files.csv", "database_files.csv"):
        text = (source / name).read_text(encoding="utf-8")
        rows[name] = [line for line in text.splitlines() if line.strip()]
    instances = {line.rsplit(",", 1)[-1] for line in rows["query_files.csv"][:n]}
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        kept = [line for line in lines if line.rsplit(",", 1)[-1] in instances]
        (out / name).write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _mini_zerosight(source: Path, out: Path, split: str, n: int, distractors: int) -> None:
    _dump(out / "queries.json", _load(source / "queries.json")[:n])
    write_placeholder_images(
        out / "images" / "distractors" / f"d{i:04d}.jpg" for i in range(distractors)
    )


_WRITERS = {
    "circo": _mini_circo,
    "cirr": _mini_cirr,
    "fashioniq": _mini_fashioniq,
    "genecis": _mini_genecis,
    "icir": _mini_icir,
    "zerosight": _mini_zerosight,
}
