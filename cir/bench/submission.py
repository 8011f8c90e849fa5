"""Official submission files: writers that validate before writing, and a validator for any file.

Formats (exactly what the test servers accept):

- CIRCO: ``{"<query id>": [50 COCO image ids as integers, best first]}`` with every query.
- CIRR: two files, ``{"version": "rc2", "metric": "recall", "<pairid>": [50 image names]}``
  and ``{"version": "rc2", "metric": "recall_subset", "<pairid>": [3 group members]}``,
  each under the server's 5 MB limit.
- FashionIQ: ``{"<category>/<index in cap.<category>.<split>.json>": [50 image names]}``;
  a file may hold one category or all three.

GeneCIS, i-CIR and ZeroSight have no test server: their predictions files have the same shape
and are checked by ``cir.bench.predictions``.

Example:
    >>> paths = write_submission("cirr", "test", rankings, queries, out_dir="runs/x",
    ...                          subset_rankings=subsets)
    >>> validate_file("cirr", "test", "/data/cirr", paths[0]).ok
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir.bench import BENCHMARKS
from cir.bench.datasets import get_dataset
from cir.bench.datasets.cirr import VERSION as CIRR_VERSION
from cir.errors import ConfigError, DataError
from cir.types import Query

CIRR_MAX_BYTES = 5 * 1024 * 1024
CIRR_METRICS = {"recall": 50, "recall_subset": 3}
LIST_LENGTH = 50
#: Benchmarks scored only locally: their files are predictions, not server submissions.
LOCAL_ONLY = ("genecis", "icir", "zerosight")
#: Benchmarks whose files may hold some of their parts only: the ``Query.extras`` key of the part.
PART_KEYS = {"fashioniq": "category", "genecis": "task"}
#: Why a split's image ids cannot be checked when its gallery listing is absent.
UNCHECKED = {
    "circo": "COCO2017_unlabeled image info file not found",
    "zerosight": "no images/ folder under the data root",
}


@dataclass(frozen=True)
class Problem:
    """One finding about a predictions file: ``error`` (the server would reject or misread
    it) or ``warning`` (accepted, but probably not what was meant)."""

    severity: str
    message: str


@dataclass
class ValidationReport:
    """The findings about one predictions file."""

    kind: str
    n_queries: int
    problems: list[Problem] = field(default_factory=list)
    path: str | None = None

    @property
    def errors(self) -> list[str]:
        return [p.message for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[str]:
        return [p.message for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, limit: int = 10) -> str:
        head = f"{self.path or 'predictions'} ({self.kind}, {self.n_queries} queries): "
        head += "valid" if self.ok else f"{len(self.errors)} error(s)"
        lines = [head]
        for severity in ("error", "warning"):
            found = [p.message for p in self.problems if p.severity == severity]
            lines += [f"  {severity}: {m}" for m in found[:limit]]
            if len(found) > limit:
                lines.append(f"  ... and {len(found) - limit} more {severity}(s)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- checking
def check_rankings(
    obj: Any,
    queries: Sequence[Query],
    *,
    kind: str,
    length: int,
    exact: bool = True,
    integer_ids: bool = False,
    allowed: Mapping[str, set[str]] | None = None,
    extra_keys: Sequence[str] = (),
    require_all: bool = True,
) -> list[Problem]:
    """Check a predictions object against the split's queries.

    Args:
        obj: the parsed JSON.
        queries: the split's queries (their ids are the valid keys).
        kind: the file kind, for messages.
        length: the required list length (exact, or at least when ``exact`` is False).
        integer_ids: values must be integers (CIRCO) instead of strings.
        allowed: per query id, the ids a ranking may contain (None: not checked).
        extra_keys: top-level keys that are not query ids (CIRR's version/metric).
        require_all: every query must be present.
    """
    if not isinstance(obj, dict):
        return [Problem("error", f"a {kind} file must be a JSON object, got {type(obj).__name__}")]
    problems: list[Problem] = []
    valid = {q.id for q in queries}
    keys = [k for k in obj if k not in extra_keys]
    unknown = [k for k in keys if k not in valid]
    if unknown:
        problems.append(Problem("error", f"{len(unknown)} unknown query id(s), e.g. {unknown[:3]}"))
    missing = [q.id for q in queries if q.id not in obj]
    if missing and require_all:
        problems.append(Problem("error", f"{len(missing)} query id(s) missing, e.g. {missing[:3]}"))
    for key in keys:
        if key in valid:
            problems += _check_list(key, obj[key], length, exact, integer_ids, allowed)
    return problems


def _check_list(key, value, length, exact, integer_ids, allowed) -> list[Problem]:
    where = f"query {key!r}"
    if not isinstance(value, list):
        return [Problem("error", f"{where}: value must be a list, got {type(value).__name__}")]
    want = "integers" if integer_ids else "strings"
    bad = [v for v in value if not _id_type_ok(v, integer_ids)]
    if bad:
        return [Problem("error", f"{where}: ids must be {want}, got {bad[0]!r}")]
    problems = []
    if len(set(value)) != len(value):
        dup = next(v for i, v in enumerate(value) if v in value[:i])
        problems.append(Problem("error", f"{where}: duplicate id {dup!r} in the ranking"))
    if exact and len(value) != length:
        problems.append(Problem("error", f"{where}: {len(value)} ids, must be exactly {length}"))
    elif not exact and len(value) < length:
        problems.append(Problem("warning", f"{where}: only {len(value)} ids (fewer than {length})"))
    if allowed is not None and key in allowed:
        outside = [v for v in value if str(v) not in allowed[key]]
        if outside:
            problems.append(
                Problem(
                    "error", f"{where}: {len(outside)} id(s) not allowed here, e.g. {outside[0]!r}"
                )
            )
    return problems


def _id_type_ok(value: Any, integer_ids: bool) -> bool:
    if integer_ids:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def check_cirr_header(obj: Any, metric: str | None = None) -> tuple[str | None, list[Problem]]:
    """The file's ``metric`` and problems with the ``version``/``metric`` entries."""
    if not isinstance(obj, dict):
        return None, []
    problems = []
    if obj.get("version") != CIRR_VERSION:
        problems.append(
            Problem("error", f'"version" must be "{CIRR_VERSION}", got {obj.get("version")!r}')
        )
    found = obj.get("metric")
    if found not in CIRR_METRICS:
        problems.append(
            Problem("error", f'"metric" must be "recall" or "recall_subset", got {found!r}')
        )
        found = metric
    elif metric is not None and found != metric:
        problems.append(
            Problem("error", f'"metric" is {found!r} but this must be a {metric!r} file')
        )
    return found, problems


def cirr_allowed(queries: Sequence[Query], metric: str, gallery: set[str] | None):
    """Ids a CIRR ranking may hold: group members minus the reference for the subset file."""
    if metric == "recall_subset":
        return {q.id: set(q.extras["group_members"]) - {q.reference_id} for q in queries}
    if gallery is None:
        return None
    return {q.id: gallery for q in queries}


def reference_warnings(obj: dict, queries: Sequence[Query]) -> list[Problem]:
    """CIRR removes the reference from rankings; flag files that still contain it."""
    hits = [
        q.id for q in queries if isinstance(obj.get(q.id), list) and q.reference_id in obj[q.id]
    ]
    if not hits:
        return []
    return [
        Problem(
            "warning",
            f"{len(hits)} ranking(s) contain the query's reference image (CIRR's protocol "
            f"removes it), e.g. query {hits[0]!r}",
        )
    ]


# ----------------------------------------------------------------------------- loading
def load_predictions(path: str | Path) -> tuple[Any, list[Problem]]:
    """Parse a predictions file, reporting duplicate keys (plain JSON keeps only the last)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file not found: {path}")
    duplicates: list[str] = []

    def keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    try:
        obj = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=keep_pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path} is not a predictions file (JSON nested too deeply)") from None
    problems = [Problem("error", f"key {k!r} appears more than once") for k in duplicates[:20]]
    return obj, problems


# ----------------------------------------------------------------------------- building
def build_submission(
    dataset: str,
    rankings: Mapping[str, Sequence[str]],
    queries: Sequence[Query],
    metric: str = "recall",
) -> dict[str, Any]:
    """The submission object: rankings cut to the official length, ids in the official type."""
    if dataset == "cirr":
        n = CIRR_METRICS[metric]
        head: dict[str, Any] = {"version": CIRR_VERSION, "metric": metric}
        return head | {q.id: list(rankings[q.id])[:n] for q in queries if q.id in rankings}
    if dataset == "circo":
        return {
            q.id: [_as_int(i) for i in list(rankings[q.id])[:LIST_LENGTH]]
            for q in queries
            if q.id in rankings
        }
    length = None if dataset == "icir" else LIST_LENGTH  # i-CIR ranks whole databases
    return {q.id: list(rankings[q.id])[:length] for q in queries if q.id in rankings}


def _as_int(value: str | int) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value  # left for the validator to report


def check_submission(
    dataset: str,
    obj: Any,
    queries: Sequence[Query],
    gallery: Mapping[str, set[str]] | set[str] | None = None,
    metric: str | None = None,
    exact: bool = True,
    require_all: bool = True,
) -> tuple[str, list[Problem]]:
    """All problems with a submission object, and its kind (``circo``, ``cirr/recall``, ...).

    ``gallery``: valid image ids (a set), or per FashionIQ category a set; None skips the check.
    """
    common = {"exact": exact, "require_all": require_all}
    if dataset == "circo":
        allowed = {q.id: gallery for q in queries} if isinstance(gallery, set) else None
        return "circo", check_rankings(
            obj,
            queries,
            kind="CIRCO",
            length=LIST_LENGTH,
            integer_ids=True,
            allowed=allowed,
            **common,
        )
    if dataset == "cirr":
        metric, problems = check_cirr_header(obj, metric)
        metric = metric or "recall"
        problems += check_rankings(
            obj,
            queries,
            kind=f"CIRR {metric}",
            length=CIRR_METRICS[metric],
            allowed=cirr_allowed(queries, metric, gallery if isinstance(gallery, set) else None),
            extra_keys=("version", "metric"),
            **common,
        )
        if isinstance(obj, dict):
            problems += reference_warnings(obj, queries)
        return f"cirr/{metric}", problems
    if dataset == "fashioniq":
        allowed = None
        if isinstance(gallery, Mapping):
            allowed = {q.id: gallery[q.extras["category"]] for q in queries}
        scoped = parts_present(dataset, obj, queries)
        return "fashioniq", check_rankings(
            obj, scoped, kind="FashionIQ", length=LIST_LENGTH, allowed=allowed, **common
        )
    if dataset in LOCAL_ONLY:
        from cir.bench.predictions import check_predictions

        return dataset, check_predictions(dataset, obj, queries, gallery, exact, require_all)
    raise ConfigError(f"unknown benchmark {dataset!r}; valid: {', '.join(BENCHMARKS)}")


def parts_present(dataset: str, obj: Any, queries: Sequence[Query]) -> list[Query]:
    """The queries of the parts (FashionIQ categories, GeneCIS tasks) ``obj`` has rankings
    for; every query when it has none, or when the benchmark has no parts."""
    key = PART_KEYS.get(dataset)
    if key is None or not isinstance(obj, dict):
        return list(queries)
    present = {q.extras[key] for q in queries if q.id in obj}
    return [q for q in queries if q.extras[key] in present] or list(queries)


# ----------------------------------------------------------------------------- writing
def write_submission(
    dataset: str,
    split: str,
    rankings: Mapping[str, Sequence[str]],
    queries: Sequence[Query],
    out_dir: str | Path,
    subset_rankings: Mapping[str, Sequence[str]] | None = None,
    gallery: Mapping[str, set[str]] | set[str] | None = None,
    require_all: bool = True,
) -> list[Path]:
    """Validate, then write the official submission file(s); returns their paths.

    ``require_all=False`` writes the rankings of a partial run (not a valid submission): queries
    may be absent and rankings shorter than the official length (a gallery with missing images).

    Raises:
        DataError: listing what is wrong; nothing is written when any file is invalid.
    """
    out_dir = Path(out_dir)
    files: list[tuple[Path, dict]] = []
    if dataset == "cirr":
        if subset_rankings is None:
            raise ConfigError(
                "CIRR needs both rankings: pass subset_rankings (top-3 group members)"
            )
        for metric, ranks in (("recall", rankings), ("recall_subset", subset_rankings)):
            obj = build_submission("cirr", ranks, queries, metric)
            files.append((out_dir / f"cirr_{split}_{metric}.json", obj))
    else:
        obj = build_submission(dataset, rankings, queries)
        kind = "predictions" if dataset in LOCAL_ONLY else "submission"
        files.append((out_dir / f"{dataset}_{split}_{kind}.json", obj))
    encoded = []
    for path, obj in files:
        kind, problems = check_submission(
            dataset, obj, queries, gallery, exact=require_all, require_all=require_all
        )
        report = ValidationReport(kind, len(queries), problems, str(path))
        text = json.dumps(obj)
        if dataset == "cirr" and len(text.encode()) > CIRR_MAX_BYTES:
            report.problems.append(Problem("error", "file exceeds the CIRR server's 5 MB limit"))
        if not report.ok:
            raise DataError("submission not written:\n" + report.summary())
        encoded.append((path, text))
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in encoded:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return [path for path, _ in encoded]


# ----------------------------------------------------------------------------- files
def split_gallery(dataset: str, data_root: str | Path, split: str):
    """The valid image ids of a split from its annotation files, or None when unavailable."""
    ds = get_dataset(dataset, data_root)
    if dataset == "cirr":
        return set(ds.gallery_names(split))
    if dataset == "fashioniq":
        return {c: set(ds.gallery_names(c, split)) for c in ds.categories}
    if dataset == "icir":
        return {name: set(database) for name, database in ds.databases().items()}
    if dataset == "zerosight":
        return set(ds.gallery()) if (ds.image_root / "images").is_dir() else None
    if dataset == "circo" and ds.image_info_file.is_file():
        return set(ds.gallery())
    return None  # GeneCIS: each query's candidates are checked instead


def validate_file(
    dataset: str, split: str, data_root: str | Path, path: str | Path
) -> ValidationReport:
    """Check a predictions file made by anyone against the split's annotation files."""
    ds = get_dataset(dataset, data_root)
    queries = ds.queries(split)
    obj, problems = load_predictions(path)
    gallery = split_gallery(dataset, data_root, split)
    kind, found = check_submission(dataset, obj, queries, gallery)
    problems += found
    if gallery is None and dataset in UNCHECKED:
        problems.append(Problem("warning", f"image ids not checked: {UNCHECKED[dataset]}"))
    size = Path(path).stat().st_size
    if dataset == "cirr" and size > CIRR_MAX_BYTES:
        problems.append(Problem("error", f"{size} bytes: over the CIRR server's 5 MB limit"))
    return ValidationReport(kind, len(queries), problems, str(path))
