"""Checks of the predictions files of benchmarks without a test server; ``check_submission``
calls them, so the run's writer, ``cir bench validate`` and ``cir bench evaluate`` apply the same
rules.

- GeneCIS: ``{"<task>/<index>": [the template's candidates, best first]}`` (at least 3); a
  file may hold any of the tasks.
- i-CIR: ``{"<row of query_files.csv>": [every database image of the query's instance]}``
  (the average precision needs every positive's rank).
- ZeroSight: ``{"<query id>": [50 image ids]}``, as the authors' evaluation asks.

Example:
    >>> problems = check_predictions("genecis", obj, queries, None, exact=True, require_all=True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cir.bench.submission import LIST_LENGTH, Problem, check_rankings, parts_present
from cir.types import Query


def check_predictions(
    dataset: str,
    obj: Any,
    queries: Sequence[Query],
    gallery: Mapping[str, set[str]] | set[str] | None,
    exact: bool,
    require_all: bool,
) -> list[Problem]:
    """Problems with a GeneCIS, i-CIR or ZeroSight predictions object.

    ``gallery``: ZeroSight's image ids, i-CIR's database ids per instance, or None (not
    checked); GeneCIS rankings are checked against each query's candidates. ``exact``: a
    ZeroSight ranking must hold exactly 50 ids and an i-CIR ranking its whole database
    (else fewer is a warning).
    """
    if dataset == "genecis":
        scoped = parts_present(dataset, obj, queries)
        allowed = {q.id: set(q.extras["candidates"]) for q in scoped}
        return check_rankings(obj, scoped, kind="GeneCIS", length=3, exact=False,
                              allowed=allowed, require_all=require_all)  # fmt: skip
    if dataset == "zerosight":
        allowed = {q.id: gallery for q in queries} if isinstance(gallery, set) else None
        return check_rankings(obj, queries, kind="ZeroSight", length=LIST_LENGTH, exact=exact,
                              allowed=allowed, require_all=require_all)  # fmt: skip
    databases = gallery if isinstance(gallery, Mapping) else {}
    allowed = {q.id: databases.get(q.extras["instance"], set()) for q in queries}
    problems = check_rankings(
        obj, queries, kind="i-CIR", length=1, exact=False,
        allowed=allowed if databases else None, require_all=require_all,
    )  # fmt: skip
    return problems + _partial_rankings(obj, queries, databases, exact)


def _partial_rankings(obj: Any, queries, databases: Mapping[str, set[str]], exact: bool):
    """i-CIR rankings that leave out some of their instance's database."""
    if not isinstance(obj, dict) or not databases:
        return []
    short = [
        (q.id, len(obj[q.id]), len(databases.get(q.extras["instance"], ())))
        for q in queries
        if isinstance(obj.get(q.id), list)
        and len(obj[q.id]) < len(databases.get(q.extras["instance"], ()))
    ]
    if not short:
        return []
    qid, got, want = short[0]
    return [
        Problem(
            "error" if exact else "warning",
            f"{len(short)} ranking(s) do not list their instance's whole database (e.g. query "
            f"{qid!r}: {got} of {want}); positives left out count as not retrieved",
        )
    ]
