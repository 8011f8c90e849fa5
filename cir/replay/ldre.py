"""LDRE's and SEIZE's released captions and edited captions.

Both repositories release the benchmark annotation files with two lists added to every query
record: the sampled BLIP-2 captions of the reference (``multi_caption_opt``, 15 strings) and the
LLM's edit of each caption (``multi_gpt-3.5_opt``, 15 strings, same order). The reference code
reads the edits under ``multi_<gpt_version>_opt``; the released files hold the GPT-3.5 ones.

- CIRCO: ``CIRCO/annotations/test.json`` (800 test queries), identical in yzy-bupt/LDRE and
  yzy-bupt/SEIZE.
- CIRR: ``CIRR/cirr/captions/cap.rc2.test1.json`` (same record shape as the official file).
- FashionIQ: ``cap.<category>.val.json`` written by SEIZE's scripts (the copies in the
  repositories are the plain official files, without the added lists).

Example:
    >>> records = read_ldre("LDRE/CIRCO/annotations/test.json")
    >>> len(records["0"].captions), len(records["0"].targets)
    (15, 15)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cir.errors import DataError
from cir.replay._annotations import identify, load_records, strings, unique
from cir.replay.records import QueryRecord

CAPTIONS_KEY = "multi_caption_opt"
_EDITS = re.compile(r"^multi_(?!caption_).+_(opt|t5)$")


def read_ldre(
    path: str | Path,
    category: str | None = None,
    captions_key: str = CAPTIONS_KEY,
    edits_key: str | None = None,
) -> dict[str, QueryRecord]:
    """Query id → record of sampled captions and their edits, from an LDRE/SEIZE file.

    Args:
        path: the annotation file with the added lists.
        category: the FashionIQ category of the file (its records carry no id).
        captions_key: the key of the caption list.
        edits_key: the key of the edit list; by default the one ``multi_*_opt`` key that is not
            the captions key (files with captions only give records without targets).

    Raises:
        DataError: a record is malformed, a list is missing, or the edit key is ambiguous.
    """
    records = load_records(path)
    edits_key = edits_key or _edits_key(records, captions_key, path)
    out = [_record(r, i, category, captions_key, edits_key, path) for i, r in enumerate(records)]
    return unique(out, path)


def _edits_key(records: list[dict[str, Any]], captions_key: str, path: str | Path) -> str | None:
    found = sorted({k for r in records for k in r if _EDITS.match(k) and k != captions_key})
    if len(found) > 1:
        raise DataError(f"{path}: several edit lists {found}; choose one with edits_key")
    return found[0] if found else None


def _record(
    r: dict[str, Any], i: int, category: str | None, captions_key: str, edits_key: str | None,
    path: str | Path,
) -> QueryRecord:  # fmt: skip
    where = f"{path}, record {i}"
    if captions_key not in r:
        raise DataError(f"{where}: no {captions_key!r} list (keys: {sorted(r)[:10]})")
    captions = strings(r[captions_key], f"{where} {captions_key!r}")
    targets: tuple[str, ...] = ()
    if edits_key is not None:
        if edits_key not in r:
            raise DataError(f"{where}: no {edits_key!r} list")
        targets = strings(r[edits_key], f"{where} {edits_key!r}")
        if len(targets) != len(captions):
            raise DataError(
                f"{where}: {len(captions)} captions but {len(targets)} edits; each caption has "
                "exactly one edit"
            )
    source = f"ldre:{captions_key}" + (f"+{edits_key}" if edits_key else "")
    return QueryRecord(
        **identify(r, i, category, where), captions=captions, targets=targets, source=source
    )
