"""Checks of a saved index, run on every load (cheap) and by ``cir index info --verify`` (full).

Every file of an index is treated as hostile: a manifest, ids file, tensor file or skipped list
that is not exactly what cir writes becomes a :class:`~cir.errors.DataError` that names the file
and what is wrong with it, never a traceback and never a silently wrong index.

Example:
    >>> problems = verify_folder("my_index")       # [] when every row and id is sound
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import torch

from cir.errors import DataError

FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SAMPLED_ROWS = 256
NORM_TOLERANCE = 0.02
_MANIFEST_FIELDS: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "count": (int,),
    "dim": (int,),
    "dtype": (str,),
    "files": (dict,),
    "sizes": (dict,),
}
_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "encoder": (dict, type(None)),
    "root": (str, type(None)),
    "sidecars": (dict,),
    "created": (dict,),
    "skipped": (int,),
}


def check_manifest(manifest: dict[str, Any], path: Path, newest: int) -> None:
    """Refuse a manifest whose fields are missing, mistyped or name files outside its folder."""
    for name, types in _MANIFEST_FIELDS.items():
        if name not in manifest:
            _bad(path, f"has no {name!r} field")
        _typed(manifest[name], types, path, name)
    for name, types in _OPTIONAL_FIELDS.items():
        if name in manifest:
            _typed(manifest[name], types, path, name)
    if manifest["format_version"] > newest:
        raise DataError(
            f"{path.parent} uses index format {manifest['format_version']}, newer than this cir "
            f"(reads up to {newest}); upgrade cir or rebuild the index"
        )
    if manifest["count"] < 0 or manifest["dim"] < 1:
        _bad(path, f"says {manifest['count']} rows of {manifest['dim']} values")
    if manifest["dtype"] not in FLOAT_DTYPES:
        _bad(path, f"says dtype {manifest['dtype']!r}; valid: {', '.join(FLOAT_DTYPES)}")
    _check_files(manifest, path)
    root = manifest.get("root")
    if root is not None and not PurePosixPath(root).is_absolute() and not Path(root).is_absolute():
        _bad(path, f"gives a relative gallery root {root!r}; it must be an absolute folder")


def _check_files(manifest: dict[str, Any], path: Path) -> None:
    files, sizes = manifest["files"], manifest["sizes"]
    for role in ("ids", "embeddings"):
        if role not in files:
            _bad(path, f"names no {role!r} file")
    if ("sidecars" in files) != ("sidecar_meta" in files):
        _bad(path, "names only one of the two sidecar files")
    for role, name in files.items():
        if not isinstance(name, str) or not plain_name(name):
            _bad(path, f"names {role} file {name!r}; only plain file names inside the index")
        if not isinstance(sizes.get(name), int) or isinstance(sizes.get(name), bool):
            _bad(path, f"gives no size for {name!r}")


def plain_name(name: str) -> bool:
    """A file name without folders (nothing outside the index folder can be named)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def check_ids_doc(doc: Any, manifest: dict[str, Any], path: Path) -> tuple[list, list | None]:
    """The ids and paths of an ids file, checked for types and count."""
    if not isinstance(doc, dict) or not isinstance(doc.get("ids"), list):
        _bad(path, 'is not {"ids": [...], "paths": [...] | null}')
    ids, paths = doc["ids"], doc.get("paths")
    if not all(isinstance(i, str) and i for i in ids):
        _bad(path, "holds ids that are not non-empty strings")
    if paths is not None and (
        not isinstance(paths, list)
        or len(paths) != len(ids)
        or not all(isinstance(p, str) for p in paths)
    ):
        _bad(path, "holds 'paths' that are not one string per id")
    if len(ids) != manifest["count"]:
        _bad(path, f"holds {len(ids)} ids; the manifest says {manifest['count']}")
    if len(set(ids)) != len(ids):
        _bad(path, f"holds duplicate ids: {duplicate_ids(ids)[:5]}")
    return ids, paths


def check_embeddings(tensors: dict[str, torch.Tensor], manifest: dict[str, Any], path: Path):
    """The embeddings tensor, checked for name, dtype and shape against the manifest."""
    emb = tensors.get("embeddings")
    if emb is None:
        _bad(path, f"has no tensor named 'embeddings' (it holds {sorted(tensors)[:5]})")
    want = FLOAT_DTYPES[manifest["dtype"]]
    if emb.dtype != want:
        _bad(path, f"holds {emb.dtype} values; the manifest says {manifest['dtype']} ({want})")
    if tuple(emb.shape) != (manifest["count"], manifest["dim"]):
        _bad(
            path,
            f"holds a {tuple(emb.shape)} tensor; the manifest says "
            f"{manifest['count']} x {manifest['dim']}",
        )
    return emb


def check_rows(emb: torch.Tensor, ids: list[str], where: Path, positions: range | list) -> None:
    """Refuse rows that are not finite unit vectors (NaN, inf, zeroed, not normalised)."""
    if not len(positions):
        return
    rows = emb[torch.as_tensor(list(positions), dtype=torch.long)].float()
    norms = rows.norm(dim=1)
    bad = ~torch.isfinite(rows).all(dim=1) | ((norms - 1).abs() > NORM_TOLERANCE)
    if bool(bad.any()):
        found = [ids[positions[i]] for i in torch.nonzero(bad).flatten().tolist()[:5]]
        raise DataError(
            f"{where} holds embeddings that are not finite unit vectors (NaN, inf or zeroed), "
            f"e.g. for {found}; rebuild the index"
        )


def sampled_positions(count: int, samples: int = SAMPLED_ROWS) -> list[int]:
    """Up to ``samples`` rows spread evenly over ``count`` (first and last included)."""
    if count <= samples:
        return list(range(count))
    step = (count - 1) / (samples - 1)
    return sorted({round(i * step) for i in range(samples)})


def check_sidecars(tensors: dict, metas: Any, manifest: dict[str, Any], path: Path) -> dict:
    """Sidecars as (tensor, meta, rows), checked for names, row counts and per-row lists."""
    if not isinstance(metas, dict) or set(metas) != set(tensors):
        _bad(path, f"describes sidecars {sorted(metas) if isinstance(metas, dict) else metas!r}, "
             f"the tensor file holds {sorted(tensors)}")  # fmt: skip
    out = {}
    for name, tensor in tensors.items():
        entry = metas[name]
        rows = entry.get("rows") if isinstance(entry, dict) else None
        meta = entry.get("meta") if isinstance(entry, dict) else None
        if not isinstance(rows, dict) or not isinstance(meta, dict):
            _bad(path, f"sidecar {name!r} lacks its 'meta' and 'rows'")
        if tensor.ndim < 1 or tensor.shape[0] != manifest["count"]:
            _bad(path, f"sidecar {name!r} has {tuple(tensor.shape)} rows, not {manifest['count']}")
        if any(not isinstance(v, list) or len(v) != manifest["count"] for v in rows.values()):
            _bad(path, f"sidecar {name!r} has per-row lists of the wrong length")
        out[name] = (tensor, meta, rows)
    return out


def check_skipped(doc: Any, path: Path) -> list[dict[str, str]]:
    """The skipped-files report: a list of {"path", "reason"} strings."""
    ok = isinstance(doc, list) and all(
        isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("reason"), str)
        for e in doc
    )
    if not ok:
        _bad(path, 'is not a list of {"path": ..., "reason": ...} entries')
    return doc


def duplicate_ids(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({i for i in ids if i in seen or seen.add(i)})


def escaping_paths(paths: list[str] | None, root: str | None) -> list[str]:
    """Image paths of a rooted index that are absolute or climb out of the root with ``..``."""
    if not paths or root is None:
        return []
    return [p for p in paths if Path(p).is_absolute() or ".." in PurePosixPath(p).parts]


def verify_folder(directory: str | Path, chunk: int = 65536) -> list[str]:
    """Every check on every row and id of the index in ``directory``: a list of problems."""
    from cir.index import store

    problems = []
    try:
        _, stored = store.load(directory, mmap=True)
    except DataError as exc:
        return [str(exc)]
    emb, ids = stored.embeddings, stored.ids
    for start in range(0, len(ids), chunk):
        try:
            check_rows(emb, ids, Path(directory), range(start, min(start + chunk, len(ids))))
        except DataError as exc:
            problems.append(str(exc))
            break
    dups = duplicate_ids(ids)
    if dups:
        problems.append(f"duplicate ids: {dups[:5]}")
    escaping = escaping_paths(stored.paths, stored.root)
    if escaping:
        problems.append(f"image paths outside the gallery folder: {escaping[:5]}")
    return problems


def _typed(value: Any, types: tuple[type, ...], path: Path, name: str) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        _bad(path, f"field {name!r} is {type(value).__name__} {value!r:.40}, not {want}")


def _bad(path: Path, what: str):
    raise DataError(f"{path} {what}; the index is damaged: rebuild it")
