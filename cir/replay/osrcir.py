"""OSrCIR-style answers stored in annotation records.

OSrCIR's multimodal LLM answers with a JSON object of four fields: "Original Image
Description", "Thoughts", "Reflections" and "Target Image Description" (Pter61/osrcir,
src/prompts.py). Its repository releases no answers. CoTRR's first stage
(freshfish15/CoTRR, eval_cirr.py) reads such answers from the official CIRR annotation records
with the fields added to each record, and skips records whose target is a failure marker; this
reader takes that shape for any of the three benchmarks.

Example:
    >>> records = read_osrcir("cirr_test1_with_descriptions.json")
    >>> records["12063"].targets
    ('A woman hugging a single dog.',)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cir.errors import DataError
from cir.replay._annotations import identify, load_records, text, unique
from cir.replay.records import QueryRecord

TARGET = "Target Image Description"
REFERENCE = "Original Image Description"
REASONING = ("Thoughts", "Reflections")
#: Values CoTRR's pipeline writes instead of a description when generation failed.
FAILURES = frozenset({"GENERATION_FAILED", "PARSE_FAILED", "IMAGE_NOT_FOUND"})


def read_osrcir(path: str | Path, category: str | None = None) -> dict[str, QueryRecord]:
    """Query id → target description (and the other answer fields), from annotation records.

    A record whose target is missing, empty or a failure marker gets no target (``targets``
    is empty): the reference pipelines skip or fall back on such queries.

    Args:
        path: a JSON list of official annotation records carrying the answer fields.
        category: the FashionIQ category of the file (its records carry no id).
    """
    records = load_records(path)
    return unique([_record(r, i, category, path) for i, r in enumerate(records)], path)


def _record(r: dict[str, Any], i: int, category: str | None, path: str | Path) -> QueryRecord:
    where = f"{path}, record {i}"
    if TARGET not in r:
        raise DataError(f"{where}: no {TARGET!r} field (keys: {sorted(r)[:10]})")
    target = (text(r[TARGET], f"{where} {TARGET!r}") or "").strip()
    reference = (text(r.get(REFERENCE), f"{where} {REFERENCE!r}") or "").strip()
    reasoning = tuple(
        value.strip()
        for key in REASONING
        if (value := text(r.get(key), f"{where} {key!r}")) and value.strip()
    )
    return QueryRecord(
        **identify(r, i, category, where),
        captions=(reference,) if reference else (),
        targets=(target,) if target and target not in FAILURES else (),
        reasoning=reasoning,
        source="osrcir",
    )
