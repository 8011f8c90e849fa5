"""Whole-gallery scoring rules on an approximate backend: exact on the ANN candidates.

A rule such as WeiMoCIR's caption term, SEIZE or BASIC scores every gallery row with more than
one product, so no single nearest-neighbour search answers it. With an approximate backend, each
query's candidates are the union of the backend's neighbours of every vector the rule reads
(the probes); the rule then runs exactly, through ``GalleryIndex.topk``, over a sub-index of those
rows, each query restricted to its own candidates. The result equals the exact rule's whenever a
query's true top ``k`` lie among its candidates.

Example:
    >>> view, restrict = candidate_view(index, probes, width=200)
    >>> rankings = view.topk(score_fn, len(probes), k=50, restrict=restrict)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cir.index.search import QueryMasks


def candidate_view(
    index: Any,
    probes: Sequence[torch.Tensor],
    width: int,
    restrict: Sequence[Sequence[str] | None] | None = None,
    keep: Sequence[str] = (),
) -> tuple[Any, list[list[str]] | None]:
    """The index to score and the per-query restriction to score it with.

    Args:
        index: a ``GalleryIndex``.
        probes: per query, the (M, D) vectors whose neighbours are its candidates.
        width: neighbours per probe vector.
        restrict: per query, the only ids it may rank (or None).
        keep: ids the rule reads by position (reference images) kept in the view, ranked only
            where they are candidates.

    Returns:
        ``(index, restrict)`` unchanged for exact search; else ``(view, candidates)``: a
        sub-index of the candidate rows and each query's candidate ids (within its
        ``restrict`` when given).
    """
    if index.backend is None or not index.backend.approximate:
        return index, None if restrict is None else [list(r) for r in restrict]
    per_query = [_neighbours(index, p, width) for p in probes]
    if restrict is not None:  # a restricted query ranks its own small set exactly
        per_query = [
            {index.position(i) for i in r} if r is not None else found
            for r, found in zip(restrict, per_query, strict=True)
        ]
    kept = {index.position(i) for i in keep if index.has(i)}
    rows = sorted(set().union(*per_query, kept))
    view = index.subset(rows)
    lists = [index._ids.take(sorted(found)) for found in per_query]
    return view, lists


def _neighbours(index: Any, probes: torch.Tensor, width: int) -> set[int]:
    q = torch.nn.functional.normalize(probes.float().reshape(-1, index.dim), dim=1)
    if not len(q):
        return set()
    masks = QueryMasks.none(len(q))
    _, positions = index.backend.search_positions(q.to(index.device), width, masks)
    found = positions.reshape(-1)
    return set(found[found >= 0].tolist())
