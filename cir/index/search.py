"""Exact top-k over a gallery, chunk by chunk, with per-query ``exclude`` and ``restrict``.

The gallery is never sorted as a whole: each chunk of rows is scored, reduced to its own top-k,
and merged into a running top-k per query. Excluded (or not-restricted) entries are scored
``-inf`` and never returned, so ``k`` larger than the candidates returns all candidates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cir.errors import DataError
from cir.index.ids import IdTable
from cir.index.topk import RunningTopK

ScoreFn = Callable[[int, int, torch.Tensor], torch.Tensor]
"""``score_fn(start, stop, gallery_chunk) -> Tensor(Q, stop - start)``."""

IdSets = Sequence[Collection[str] | None] | None

_NEG_INF = float("-inf")


@dataclass
class QueryMasks:
    """Per-query exclusions and restrictions as (query, position) pairs, sorted by position."""

    num_queries: int
    excl_q: torch.Tensor
    excl_p: torch.Tensor
    restricted: torch.Tensor  # bool (Q,): queries that rank only their allowed positions
    allow_q: torch.Tensor
    allow_p: torch.Tensor

    @property
    def all_restricted(self) -> bool:
        return self.num_queries > 0 and bool(self.restricted.all())

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
        if bool(self.restricted.any()):
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
    empty = torch.empty(0, dtype=torch.long)
    if id_sets is None:
        return empty, empty
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
        return empty, empty
    q_t, p_t = torch.tensor(qs, dtype=torch.long), torch.tensor(ps, dtype=torch.long)
    order = torch.argsort(p_t)
    return q_t[order], p_t[order]


def default_chunk_rows(num_queries: int, num_rows: int, dim: int, upcast: bool) -> int:
    """Rows per chunk: few chunks (each costs a few small ops), bounded memory.

    The score block of a chunk stays under 16 Mi values; with ``upcast`` the fp32 copy of the
    chunk's rows also stays under 4 Mi values (16 MiB), so it is reused from the CPU caches.
    """
    rows = (1 << 24) // max(num_queries, 1)
    if upcast:
        rows = min(rows, (1 << 22) // max(dim, 1))
    return max(1, min(num_rows, max(1024, rows)))


def chunked_topk(
    score_fn: ScoreFn,
    view: Callable[[int, int], torch.Tensor],
    num_queries: int,
    num_rows: int,
    k: int,
    masks: QueryMasks,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k of ``score_fn`` over rows ``[0, num_rows)``.

    Args:
        score_fn: scores a chunk, ``(start, stop, view(start, stop)) -> (Q, stop - start)``.
        view: gives the gallery rows of a chunk in the form ``score_fn`` expects.
        num_queries: Q.
        num_rows: gallery size N.
        k: entries kept per query.
        masks: exclusions and restrictions.
        chunk_rows: rows per chunk (default: ``default_chunk_rows``).

    Returns:
        ``(scores, positions)``, both (Q, min(k, N)), best first; excluded entries score -inf.
    """
    step = chunk_rows or default_chunk_rows(num_queries, num_rows, 0, upcast=False)
    best = RunningTopK(min(k, num_rows))
    for start in range(0, num_rows, step):
        stop = min(start + step, num_rows)
        if not masks.chunk_has_candidates(start, stop):
            continue
        scores = score_fn(start, stop, view(start, stop))
        _check_scores(scores, num_queries, stop - start)
        best.push(masks.apply(scores, start, stop), start)
    if best.values is None:  # every query restricted to nothing
        return torch.empty(num_queries, 0), torch.empty(num_queries, 0, dtype=torch.long)
    return best.values, best.positions


def _check_scores(scores: torch.Tensor, q: int, n: int) -> None:
    if scores.shape != (q, n):
        raise ValueError(f"score_fn returned shape {tuple(scores.shape)}; expected ({q}, {n})")


def exact_search(
    storage: torch.Tensor, queries: torch.Tensor, k: int, masks: QueryMasks, mode: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products of fp32 ``queries`` with the stored rows (any storage dtype).

    Where the device multiplies the storage dtype natively (CUDA; CPUs with AVX512-FP16/BF16)
    and the queries are few, products run on the stored rows and the best ``k + margin``
    candidates are rescored exactly in fp32 (2-byte products round the scores). Otherwise each
    chunk is upcast to fp32 into a reused buffer: no rescoring, and the cost of upcasting the
    gallery is shared by all queries of the batch. ``mode`` (``native``/``upcast``) forces one.
    """
    n, q = storage.shape[0], queries.shape[0]
    if storage.dtype == torch.float32:
        return chunked_topk(
            lambda a, b, g: queries @ g.T, lambda a, b: storage[a:b], q, n, k, masks
        )
    wide = k + max(16, k // 2)
    if mode == "auto":
        few = q * wide * 16 <= n  # rescoring reads q * wide rows: worth it for few queries
        mode = "native" if few and native_products(storage.dtype, storage.device) else "upcast"
    if mode == "native":
        low = queries.to(storage.dtype)
        v, p = chunked_topk(lambda a, b, g: low @ g.T, lambda a, b: storage[a:b], q, n, wide, masks)
        return rescore(queries, storage, p, v, k)
    rows = default_chunk_rows(q, n, storage.shape[1], upcast=True)
    view = Upcaster(storage, rows)
    return chunked_topk(lambda a, b, g: queries @ g.T, view, q, n, k, masks, rows)


def rescore(
    queries: torch.Tensor, storage: torch.Tensor, pos: torch.Tensor, approx: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact fp32 scores for candidate positions found with reduced-precision products.

    Candidates that were masked (-inf) stay masked. Returns the best ``k`` as (scores, positions).
    """
    if pos.numel() == 0:
        return approx[:, :k].float(), pos[:, :k]
    cand = storage[pos.reshape(-1)].float().reshape(*pos.shape, -1)
    exact = torch.einsum("qd,qkd->qk", queries.float(), cand)
    exact.masked_fill_(torch.isneginf(approx), _NEG_INF)
    v, sel = torch.topk(exact, min(k, exact.shape[1]), dim=1)
    return v, pos.gather(1, sel)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_products(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether matrix products in the storage dtype are fast on ``device``.

    Always on CUDA; on the CPU only with hardware fp16/bf16 arithmetic (AVX512-FP16 or AMX-FP16
    for fp16, AVX512-BF16 or AMX-BF16 for bf16). Elsewhere chunks are upcast to fp32 first.
    """
    if dtype == torch.float32 or device.type == "cuda":
        return True
    flags = _cpu_flags()
    if dtype == torch.float16:
        return bool(flags & {"avx512_fp16", "amx_fp16"})
    if dtype == torch.bfloat16:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


class Upcaster:
    """Hands out fp32 copies of storage rows through one reusable buffer (no new allocations)."""

    def __init__(self, storage: torch.Tensor, chunk_rows: int) -> None:
        self.storage = storage
        if storage.dtype == torch.float32:
            self.buffer = None
        else:
            shape = (min(chunk_rows, storage.shape[0]), storage.shape[1])
            self.buffer = torch.empty(shape, dtype=torch.float32, device=storage.device)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        rows = self.storage[start:stop]
        if self.buffer is None:
            return rows
        out = self.buffer[: stop - start]
        out.copy_(rows)
        return out
