"""GeneCIS (Vaze et al., "GeneCIS: A Benchmark for General Conditional Image Similarity",
CVPR 2023): four tasks, each a list of templates scored within their own small gallery.

A template (one entry of ``<task>.json``) has a ``reference``, a ``target``, a one- or two-word
``condition`` and a ``gallery`` of 14 distractors; the target is ranked among itself and the
distractors (15 candidates) and Recall@1/2/3 is reported. The object tasks (``focus_object``,
``change_object``) name COCO 2017 validation images by ``val_image_id``; the attribute tasks
(``focus_attribute``, ``change_attribute``) name Visual Genome 1.2 images by ``image_id`` with an
``instance_bbox``, and rank the dilated, square-padded crops of those boxes
(``cir.bench.datasets.regions``), which cir writes once into a crop folder.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cir.bench.datasets.base import BenchDataset, Part, Protocol, images_by_stem, tree
from cir.bench.datasets.regions import Region, parse_box, write_crops
from cir.errors import ConfigError, DataError
from cir.types import Query

#: The four tasks, in the order of the paper's table.
TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
OBJECT_TASKS = ("focus_object", "change_object")
#: Where the attribute tasks' images are looked for: the folders of Visual Genome 1.2's archives.
VG_FOLDERS = ("VG_100K", "VG_100K_2")
#: The crops' folder in a cache folder.
CROP_FOLDER = "genecis-crops"


@dataclass(frozen=True)
class _Entry:
    """One image a template names: its gallery id, its source image and (attributes) its box."""

    id: str
    source: Path
    region: Region | None = None


class GeneCIS(BenchDataset):
    """Reader of the GeneCIS template files (the layout ``cir data download genecis`` writes).

    Query ids are ``<task>/<index in <task>.json>``; gallery ids are COCO image ids
    (``"153527"``, object tasks) or region ids (``"2373096_91_7_258_252"``, attribute tasks).
    ``extras`` hold ``task``, ``condition``, ``target_id`` and ``candidates`` (the target, then the
    distractors, each id once): ``cir bench run`` ranks only the candidates.

    Args:
        tasks: the tasks to read (default: those whose file is under ``data_root``; all four
            when there is none, so that the missing file is named).
        crop_root: the folder for the attribute tasks' crops (default
            ``<cache>/genecis-crops``, the cache of ``cir bench run`` or cir's default one).

    Example:
        >>> ds = GeneCIS("/data/genecis", tasks=["change_object"])
        >>> q = ds.queries("val")[0]
        >>> q.text, len(q.extras["candidates"])
        ('wall', 15)
    """

    name: ClassVar[str] = "genecis"
    splits: ClassVar[tuple[str, ...]] = ("val",)
    text_rules: ClassVar[dict[str, str]] = {"condition": "the template's condition as written"}
    default_text_rule: ClassVar[str] = "condition"
    protocol: ClassVar[Protocol] = Protocol(
        exclude_reference=False, k=15, restrict_key="candidates"
    )

    def __init__(
        self,
        data_root: str | Path,
        image_root: str | Path | None = None,
        text_rule: str | None = None,
        tasks: Sequence[str] | None = None,
        crop_root: str | Path | None = None,
    ) -> None:
        super().__init__(data_root, image_root, text_rule)
        unknown = [t for t in tasks or () if t not in TASKS]
        if unknown:
            raise ConfigError(f"genecis: unknown tasks {unknown}; valid: {', '.join(TASKS)}")
        present = [t for t in TASKS if self.annotation_file(t).is_file()]
        self.tasks = tuple(tasks or present or TASKS)
        self._crops_given = crop_root is not None
        self.crop_root = Path(crop_root) if crop_root is not None else _default_crop_root()
        self._vg: dict[str, Path] | None = None

    def use_cache(self, root: Path) -> None:
        if not self._crops_given:
            self.crop_root = Path(root) / CROP_FOLDER

    # ----------------------------------------------------------------- annotations
    def annotation_file(self, task: str) -> Path:
        return self.data_root / f"{task}.json"

    def annotation_files(self, split: str) -> list[Path]:
        self.check_split(split)
        return [self.annotation_file(t) for t in self.tasks]

    def queries(self, split: str) -> list[Query]:
        self.check_split(split)
        return [q for task in self.tasks for q, _ in self._templates(task)]

    def _templates(self, task: str) -> list[tuple[Query, list[_Entry]]]:
        """Each template as its query and every image it names (reference first)."""
        path = self.annotation_file(task)
        records = self.read_json(path)
        if not isinstance(records, list):
            raise DataError(f"genecis: {path} must hold a list of templates")
        return [self._template(task, i, r, path) for i, r in enumerate(records)]

    def _template(self, task: str, index: int, record: Any, path: Path):
        try:
            return self._parse(task, index, record)
        except (KeyError, TypeError, ValueError) as exc:
            attribute = task not in OBJECT_TASKS
            form = "image_id and instance_bbox" if attribute else "an integer val_image_id"
            raise DataError(
                f"genecis: {path}: template {index} is malformed ({_reason(exc)}); every "
                f"template needs a condition (text), and reference, target and gallery entries "
                f"with {form}"
            ) from None

    def _parse(self, task: str, index: int, record: dict) -> tuple[Query, list[_Entry]]:
        condition = record["condition"]
        if not isinstance(condition, str) or not isinstance(record["gallery"], list):
            raise ValueError("condition must be text and gallery a list")
        entries = [self._entry(task, e) for e in (record["reference"], record["target"])]
        entries += [self._entry(task, e) for e in record["gallery"]]
        candidates = list(dict.fromkeys(e.id for e in entries[1:]))
        extras = {
            "task": task,
            "condition": condition,
            "target_id": entries[1].id,
            "candidates": candidates,
        }
        query = Query(
            text=condition.strip(), reference_id=entries[0].id, id=f"{task}/{index}", extras=extras
        )
        return query, entries

    def _entry(self, task: str, entry: dict) -> _Entry:
        if not isinstance(entry, dict):
            raise TypeError(f"an image entry must be an object, got {entry!r}")
        if task in OBJECT_TASKS:
            coco_id = _image_number(entry["val_image_id"])
            return _Entry(str(coco_id), self.image_root / "val2017" / f"{coco_id:012d}.jpg")
        region = Region(str(_image_number(entry["image_id"])), parse_box(entry["instance_bbox"]))
        return _Entry(region.id, self._vg_image(region.image_id), region)

    def _vg_image(self, image_id: str) -> Path:
        if self._vg is None:
            self._vg = {}
            for folder in reversed(VG_FOLDERS):
                self._vg |= images_by_stem(self.image_root / folder, ("jpg",))
        return self._vg.get(image_id, self.image_root / VG_FOLDERS[0] / f"{image_id}.jpg")

    # ----------------------------------------------------------------- galleries
    def parts(self, split: str) -> list[Part]:
        """One part per task. The attribute tasks' crops are written first (once)."""
        self.check_split(split)
        parts = []
        for task in self.tasks:
            templates = self._templates(task)
            entries = {e.id: e for _, named in templates for e in named}
            if task not in OBJECT_TASKS:
                jobs = [(e.region, e.source, self._crop_path(e)) for e in entries.values()]
                write_crops(jobs)
            gallery = {gid: self._gallery_path(e) for gid, e in entries.items()}
            parts.append(Part(task, [q for q, _ in templates], gallery))
        return parts

    def _gallery_path(self, entry: _Entry) -> Path:
        return entry.source if entry.region is None else self._crop_path(entry)

    def _crop_path(self, entry: _Entry) -> Path:
        return self.crop_root / f"{entry.id}.png"

    def image_files(self, split: str) -> Iterator[Path]:
        """The source images (COCO photos, Visual Genome photos) every template needs."""
        self.check_split(split)
        seen: set[Path] = set()
        for task in self.tasks:
            for _, entries in self._templates(task):
                for entry in entries:
                    if entry.source not in seen:
                        seen.add(entry.source)
                        yield entry.source

    def preset_scopes(self, available: Collection[str]) -> list[str]:
        """``genecis``, and ``genecis/<task>`` when one task is run.

        Raises:
            ConfigError: several tasks are run with a pipeline that has per-task presets for
                some of them (one pipeline setting cannot follow both).
        """
        if len(self.tasks) == 1:
            return [self.name, f"{self.name}/{self.tasks[0]}"]
        own = sorted(
            p for p in available if p.split("@")[0] in {f"{self.name}/{t}" for t in self.tasks}
        )
        if own:
            raise ConfigError(
                f"this pipeline has per-task GeneCIS presets ({', '.join(own)}); run one task "
                f"at a time with --task (one of {', '.join(self.tasks)}), or pass "
                "--preset genecis to run every task with the shared preset"
            )
        return [self.name]

    def expected_tree(self) -> str:
        lines = [(0, "<data-root>/")] + [(1, f"{t}.json") for t in TASKS]
        lines += [
            (0, "<image-root>/  (defaults to <data-root>)"),
            (1, "val2017/000000153527.jpg ...  (COCO 2017 val: the object tasks)"),
            (1, "VG_100K/2373096.jpg ...  (Visual Genome 1.2, with VG_100K_2/: attribute tasks)"),
        ]
        return tree(lines)


def _image_number(value: Any) -> int:
    """An image id: a non-negative integer, or a string of digits."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"image ids are integers, got {value!r}")
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError(f"image ids are integers, got {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"image ids are non-negative, got {value!r}")
    return number


def _reason(exc: Exception) -> str:
    return f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else str(exc)


def _default_crop_root() -> Path:
    from cir.cache import default_cache_dir

    return default_cache_dir() / CROP_FOLDER
