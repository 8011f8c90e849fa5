"""CIReVL's cached captions and LLM rewrites, as its reference code writes them.

CIReVL (ExplainableML/Vision_by_Language, src/utils.py) keeps two files per dataset and split
in ``precomputed/``; the repository releases neither, so these readers serve files produced by
its code (by the authors on request, or by anyone who ran it):

- ``<dataset>_blip2_t5_<split>_mods_<prompt>.json`` (``_<engine>`` appended for another LLM
  than gpt-3.5-turbo): ``{"base_caption": [...], "instruction": [...], "modified_captions":
  [...]}``, three lists in the order of the query dataset, which is the order of the official
  annotation file. No ids: :func:`read_cirevl_mods` takes the split's query ids in that order.
- ``<dataset>_blip2_t5_<split>_captions.pkl``: a pickled dict of lists ``all_captions``,
  ``gt_img_ids``, ``relative_captions``, ``target_names``, ``reference_names``, ``query_ids``.
  Read with the restricted unpickler: on CIRR its ``query_ids`` are torch tensors, which are
  refused (give the query ids instead, or use the JSON file).

Example:
    >>> ids = [q.id for q in get_dataset("circo", root).queries("test")]
    >>> mods = "precomputed/circo_blip2_t5_test_mods_structural_modifier_prompt.json"
    >>> records = read_cirevl_mods(mods, ids)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cir.errors import DataError
from cir.replay._annotations import load_json, strings, unique
from cir.replay.records import QueryRecord
from cir.replay.safe_pickle import load_plain_pickle

MODS_KEYS = ("base_caption", "instruction", "modified_captions")


def read_cirevl_mods(path: str | Path, query_ids: Sequence[str]) -> dict[str, QueryRecord]:
    """Query id → BLIP-2 caption, instruction and LLM rewrite, from CIReVL's mods JSON.

    Args:
        path: the ``..._mods_<prompt>.json`` file.
        query_ids: the split's query ids in the order of its annotation file.
    """
    value = load_json(path)
    if not isinstance(value, dict) or any(k not in value for k in MODS_KEYS):
        raise DataError(f"{path}: expected a JSON object with the lists {list(MODS_KEYS)}")
    columns = [strings(value[k], f"{path} {k!r}") for k in MODS_KEYS]
    _check_lengths(path, query_ids, columns)
    records = [
        QueryRecord(str(qid), modification=ins, captions=(cap,), targets=(mod,), source="cirevl")
        for qid, cap, ins, mod in zip(query_ids, *columns, strict=True)
    ]
    return unique(records, path)


def read_cirevl_captions(
    path: str | Path, query_ids: Sequence[str] | None = None
) -> dict[str, QueryRecord]:
    """Query id → BLIP-2 caption, instruction and reference, from CIReVL's captions pickle.

    Args:
        path: the ``..._captions.pkl`` file (read with the restricted unpickler).
        query_ids: the split's query ids in file order; by default the pickle's own
            ``query_ids`` (CIRCO), which FashionIQ files leave empty.
    """
    data = load_plain_pickle(path)
    if not isinstance(data, dict) or "all_captions" not in data:
        raise DataError(f"{path}: expected CIReVL's dict of lists with 'all_captions'")
    captions = strings(list(data["all_captions"]), f"{path} 'all_captions'")
    instructions = _optional(data, "relative_captions", len(captions), path)
    references = _optional(data, "reference_names", len(captions), path)
    ids = query_ids if query_ids is not None else _own_ids(data, path)
    _check_lengths(path, ids, [captions])
    records = [
        QueryRecord(str(qid), references[i], instructions[i], (captions[i],), source="cirevl")
        for i, qid in enumerate(ids)
    ]
    return unique(records, path)


def _optional(data: dict[str, Any], key: str, n: int, path: str | Path) -> list[str | None]:
    values = list(data.get(key) or [])
    if not values:
        return [None] * n
    out = strings(values, f"{path} {key!r}")
    if len(out) != n:
        raise DataError(f"{path}: {len(out)} {key} for {n} captions")
    return list(out)


def _own_ids(data: dict[str, Any], path: str | Path) -> tuple[str, ...]:
    ids = list(data.get("query_ids") or [])
    if not ids:
        raise DataError(f"{path}: holds no query_ids (FashionIQ files do not); give query_ids")
    return strings([str(i) if isinstance(i, int) else i for i in ids], f"{path} 'query_ids'")


def _check_lengths(path: str | Path, ids: Sequence[str], columns: list[tuple[str, ...]]) -> None:
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise DataError(f"{path}: the lists have different lengths {sorted(lengths)}")
    if lengths != {len(ids)}:
        raise DataError(
            f"{path}: {lengths.pop()} entries for {len(ids)} query ids; the file must cover the "
            "split in the order of its annotation file (CIReVL drops unreadable images, which "
            "shifts every later entry)"
        )
