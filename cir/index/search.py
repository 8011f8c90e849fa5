"""The one top-k driver: exact top-k of any score function over a gallery, chunk by chunk.

Every ranking in cir goes through :func:`chunked_topk`: ``GalleryIndex.search`` and
``GalleryIndex.topk`` (through the compute paths of ``cir.index.paths``) and
``cir.scoring.chunked_topk`` over a plain tensor. The gallery is never sorted as a whole: each
chunk of rows is scored, reduced to its own best entries and merged into a running top-k per
query (``cir.index.topk``).

Semantics, the same everywhere:

- excluded and not-allowed entries (``exclude``/``restrict``), entries scored ``-inf`` and NaN
  scores are never returned; where a query has fewer than ``k`` candidates, its result is padded
  with score ``-inf`` and position ``-1``;
- a position appears at most once per query;
- scores come back best first.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from cir.errors import DataError
from cir.index.ids import IdTable
from cir.index.topk import RunningTopK

ScoreFn = Callable[[int, int, torch.Tensor], torch.Tensor]
"""``score_fn(start, stop, gallery_chunk) -> Tensor(Q, stop - start)``."""

IdSets = Sequence[Collection[str] | None] | None

_NEG_INF = float("-inf")
_EMPTY = torch.empty(0, dtype=torch.long)


@dataclass
class QueryMasks:
    """Per-query exclusions and restrictions as (query, position) pairs, sorted by position."""

    num_queries: int
    excl_q: torch.Tensor
    excl_p: torch.Tensor
    restricted: torch.Tensor  # bool (Q,): queries that rank only their allowed positions
    allow_q: torch.Tensor
    allow_p: torch.Tensor

    @classmethod
    def none(cls, num_queries: int = 0) -> QueryMasks:
        """No exclusion, no restriction."""
        restricted = torch.zeros(num_queries, dtype=torch.bool)
        return cls(num_queries, _EMPTY, _EMPTY, restricted, _EMPTY, _EMPTY)

    @classmethod
    def from_rows(cls, rows: torch.Tensor) -> QueryMasks:
        """One gallery row to exclude per query, ``rows`` (Q,) with -1 for none."""
        rows = rows.detach().long().cpu().reshape(-1)
        q = torch.nonzero(rows >= 0).reshape(-1)
        p = rows[q]
        order = torch.argsort(p)
        masks = cls.none(len(rows))
        masks.excl_q, masks.excl_p = q[order], p[order]
        return masks

    @property
    def restricts(self) -> bool:
        return bool(self.restricted.any())

    @property
    def all_restricted(self) -> bool:
        return self.num_queries > 0 and bool(self.restricted.all())

    def most_excluded(self) -> int:
        """The largest number of excluded positions of any one query."""
        if not self.excl_q.numel():
            return 0
        return int(torch.bincount(self.excl_q).max())

    def chunk_has_candidates(self, start: int, stop: int) -> bool:
        """False only when every query is restricted and none may rank a row of this chunk."""
        if not self.all_restricted:
            return True
        return bool(((self.allow_p >= start) & (self.allow_p < stop)).any())

    def apply(self, scores: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Set the scores of excluded and not-allowed entries of rows ``[start, stop)`` to -inf."""
        dev = scores.device
        if self.excl_p.numel():
            sel = (self.excl_p >= start) & (self.excl_p < stop)
            if bool(sel.any()):
                q, p = self.excl_q[sel].to(dev), self.excl_p[sel].to(dev) - start
                scores[q, p] = _NEG_INF
        if self.restricts:
            keep = (~self.restricted).to(dev).unsqueeze(1).expand_as(scores).clone()
            sel = (self.allow_p >= start) & (self.allow_p < stop)
            keep[self.allow_q[sel].to(dev), self.allow_p[sel].to(dev) - start] = True
            scores.masked_fill_(~keep, _NEG_INF)
        return scores


def build_masks(
    num_queries: int,
    exclude: IdSets,
    restrict: IdSets,
    positions: IdTable | dict[str, int],
) -> QueryMasks:
    """Turn per-query id collections into position pairs.

    Unknown ids in ``exclude`` are ignored (nothing to drop); unknown ids in ``restrict`` are an
    error, since they mean the subset was drawn from a different gallery.
    """
    excl_q, excl_p = _pairs("exclude", num_queries, exclude, positions, strict=False)
    allow_q, allow_p = _pairs("restrict", num_queries, restrict, positions, strict=True)
    restricted = torch.zeros(num_queries, dtype=torch.bool)
    if restrict is not None:
        for q, ids in enumerate(restrict):
            restricted[q] = ids is not None
    return QueryMasks(num_queries, excl_q, excl_p, restricted, allow_q, allow_p)


def _pairs(
    what: str, num_queries: int, id_sets: IdSets, positions: IdTable | dict, strict: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if id_sets is None:
        return _EMPTY, _EMPTY
    if isinstance(id_sets, str | bytes) or len(id_sets) != num_queries:
        got = "a string" if isinstance(id_sets, str | bytes) else f"{len(id_sets)} entries"
        raise DataError(
            f"{what} must hold one collection of ids (or None) per query: "
            f"{num_queries} queries, got {got}"
        )
    qs: list[int] = []
    ps: list[int] = []
    for q, ids in enumerate(id_sets):
        if ids is None:
            continue
        if isinstance(ids, str):
            raise DataError(f"{what}[{q}] is a string; give a collection of ids, e.g. [{ids!r}]")
        found = (
            positions.lookup(ids)
            if isinstance(positions, IdTable)
            else {i: positions[i] for i in ids if i in positions}
        )
        qs.extend([q] * len(set(found.values())))
        ps.extend(set(found.values()))
        unknown = [i for i in ids if i not in found] if strict else []
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise DataError(
                f"{what}[{q}] names {len(unknown)} id(s) not in the index: {shown}"
                f"{' ...' if len(unknown) > 5 else ''}; restrict to ids of this gallery "
                "(check that the index was built over the right image folder)"
            )
    if not qs:
        return _EMPTY, _EMPTY
    q_t, p_t = torch.tensor(qs, dtype=torch.long), torch.tensor(ps, dtype=torch.long)
    order = torch.argsort(p_t)
    return q_t[order], p_t[order]


class ProductScores:
    """A score function of plain inner products ``queries @ rows.T``.

    Any callable ``(start, stop, rows) -> scores`` works with ``GalleryIndex.topk``; this one also
    tells the index that the scores are inner products, so it may compute them on the fastest
    compute path of the machine (2-byte products with exact rescoring, faiss) instead of handing
    out float32 rows.

    Example:
        >>> idx.topk(ProductScores(q), len(q), k=10)   # the same ranking as idx.search(q, k=10)
    """

    def __init__(self, queries: torch.Tensor) -> None:
        self.queries = queries.float()

    def __call__(self, start: int, stop: int, rows: torch.Tensor) -> torch.Tensor:
        return self.queries @ rows.T.to(self.queries.dtype)


def chunked_topk(
    score_fn: ScoreFn,
    view: Callable[[int, int], torch.Tensor],
    num_queries: int | None,
    num_rows: int,
    k: int,
    masks: QueryMasks,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k of ``score_fn`` over rows ``[0, num_rows)``.

    Args:
        score_fn: scores a chunk, ``(start, stop, view(start, stop)) -> (Q, stop - start)``.
        view: gives the gallery rows of a chunk in the form ``score_fn`` expects.
        num_queries: Q (None: taken from the first chunk's scores).
        num_rows: gallery size N.
        k: entries kept per query.
        masks: exclusions and restrictions.
        chunk_rows: rows per chunk.

    Returns:
        ``(scores, positions)``, both (Q, min(k, N)), best first; entries that are not
        candidates score -inf at position -1.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    best = RunningTopK(min(k, num_rows))
    for start in range(0, num_rows, chunk_rows):
        stop = min(start + chunk_rows, num_rows)
        if not masks.chunk_has_candidates(start, stop):
            continue
        scores = score_fn(start, stop, view(start, stop))
        num_queries = _check_scores(scores, num_queries, stop - start)
        best.push(masks.apply(scores, start, stop), start)
    if (
        best.values is None
    ):  # nothing scored: an empty gallery, or every query restricted to nothing
        q = num_queries or 0
        return torch.empty(q, 0), torch.empty(q, 0, dtype=torch.long)
    return best.values, best.positions.masked_fill(torch.isneginf(best.values), -1)


def _check_scores(scores: torch.Tensor, q: int | None, n: int) -> int:
    want = (scores.shape[0] if q is None else q, n)
    if scores.ndim != 2 or tuple(scores.shape) != want:
        raise ValueError(f"score_fn returned shape {tuple(scores.shape)}; expected {want}")
    return want[0]
