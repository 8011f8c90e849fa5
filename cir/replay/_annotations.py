"""Shared reading of annotation-shaped files: official benchmark records with extra keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cir.bench.datasets.fashioniq import join_captions
from cir.errors import DataError

FORMATS = "CIRCO (id, reference_img_id), CIRR (pairid, reference), FashionIQ (candidate, captions)"


def load_json(path: str | Path) -> Any:
    """The JSON value in ``path``, with errors that name the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"file {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of objects (an annotation file), or a clear error."""
    records = load_json(path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: expected a JSON list of annotation objects ({FORMATS})")
    return records


def identify(record: dict[str, Any], index: int, category: str | None, where: str) -> dict:
    """Query id, reference id and modification of one official annotation record.

    FashionIQ records carry no id: the query id is ``<category>/<index>``, as cir's reader
    names it, so ``category`` must be given for them.
    """
    if "pairid" in record:
        return _ids(str(record["pairid"]), record.get("reference"), record.get("caption"), where)
    if "reference_img_id" in record and "id" in record:
        text = record.get("relative_caption")
        return _ids(str(record["id"]), str(record["reference_img_id"]), text, where)
    if "candidate" in record and "captions" in record:
        if not category:
            raise DataError(
                f"{where}: FashionIQ records have no id; give the category (dress, shirt or "
                "toptee) so that query ids read <category>/<index>"
            )
        text = join_captions(strings(record["captions"], f"{where} 'captions'"))
        return _ids(f"{category}/{index}", record["candidate"], text, where)
    raise DataError(f"{where}: not an annotation record of {FORMATS}; keys: {sorted(record)[:8]}")


def _ids(query_id: str, reference: Any, modification: Any, where: str) -> dict:
    for name, value in (("reference", reference), ("modification", modification)):
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: the {name} must be a string, got {type(value).__name__}")
    return {"query_id": query_id, "reference_id": reference, "modification": modification}


def strings(value: Any, where: str) -> tuple[str, ...]:
    """``value`` as a tuple of strings, or an error naming ``where``."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: expected a list of strings, got {str(value)[:80]}")
    return tuple(value)


def text(value: Any, where: str) -> str | None:
    """A string field (None when absent), or an error naming ``where``."""
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{where}: expected a string, got {type(value).__name__}")


def unique(records: list[Any], path: str | Path) -> dict[str, Any]:
    """Records by query id; two records with one id are an error."""
    out: dict[str, Any] = {}
    for record in records:
        if record.query_id in out:
            raise DataError(f"{path}: query id {record.query_id!r} appears twice")
        out[record.query_id] = record
    return out
