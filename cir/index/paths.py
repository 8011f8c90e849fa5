"""Compute paths of inner-product search over the stored rows (fp16, bf16 or fp32).

- ``fp32``: each chunk of rows is converted to float32 in one reused buffer and multiplied in
  float32: exact, and the conversion is shared by all queries of a batch.
- ``fp16`` / ``bf16``: products in the 2-byte type, on the stored rows as they are (or on a chunk
  converted into a reused buffer when they are stored in the other type); then the best
  ``k + margin`` candidates of each query are rescored exactly in float32 from the stored rows,
  so the ranking is that of exact products with the stored rows whenever the true top ``k`` lie
  among the candidates (the margin covers the rounding of 2-byte products).
- ``faiss``: faiss's exhaustive search over the stored rows (``cir.index.faiss_backend``).

Scratch memory beyond the stored rows, whatever the gallery size: one chunk's score block (at
most 8 Mi scores: 32 MiB in float32, 16 MiB in 2-byte types) and what the running top-k keeps
of it, the conversion buffers (at most 4 Mi values: 16 MiB in float32, plus 8 MiB of bf16 on
the bf16 path) and the rescoring block (at most 4 Mi float32 values: 16 MiB): under 100 MiB.
"""

from __future__ import annotations

import torch

from cir.index.search import QueryMasks, ScoreFn, chunked_topk

COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCORE_BLOCK = 1 << 23
BUFFER_VALUES = 1 << 22
RESCORE_VALUES = 1 << 22

_NEG_INF = float("-inf")


def margin(path: str, k: int) -> int:
    """Extra candidates rescored on a 2-byte path, beyond ``k``.

    fp16 products round scores to about 2.4e-4 (11 significant bits). bf16 products come out
    centred near each query's k-th score (see :class:`CenteredRows`), but their inputs are
    rounded to 8 significant bits (errors of about 1e-4 on unit vectors), so bf16 keeps more.
    """
    return max(32, k) if path == "bf16" else max(16, k // 2)


def default_chunk_rows(num_queries: int, num_rows: int, dim: int, converts: bool) -> int:
    """Rows per chunk: few chunks (each costs a few small operations), bounded scratch.

    The score block stays under ``SCORE_BLOCK`` values; when the rows are converted, the buffer
    stays under ``BUFFER_VALUES`` values, so it is reused from the CPU caches.
    """
    rows = SCORE_BLOCK // max(num_queries, 1)
    if converts:
        rows = min(rows, BUFFER_VALUES // max(dim, 1))
    return max(1, min(num_rows, max(1024, rows)))


class RowView:
    """Rows ``[start, stop)`` of the stored rows in a compute dtype.

    Rows already in that dtype are handed out as they are; otherwise they are converted into one
    reusable buffer (no allocation per chunk).
    """

    def __init__(self, storage: torch.Tensor, dtype: torch.dtype, chunk_rows: int) -> None:
        self.storage = storage
        self.buffer = None
        if storage.dtype != dtype:
            shape = (min(chunk_rows, storage.shape[0]), storage.shape[1])
            self.buffer = torch.empty(shape, dtype=dtype, device=storage.device)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        rows = self.storage[start:stop]
        if self.buffer is None:
            return rows
        out = self.buffer[: stop - start]
        out.copy_(rows)
        return out


def generic_topk(
    storage: torch.Tensor,
    score_fn: ScoreFn,
    num_queries: int | None,
    k: int,
    masks: QueryMasks,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of any score function, handed float32 rows chunk by chunk (exact)."""
    n, d = storage.shape
    converts = storage.dtype != torch.float32
    rows = chunk_rows or default_chunk_rows(num_queries or 1, n, d, converts)
    view = RowView(storage, torch.float32, rows)
    return chunked_topk(score_fn, view, num_queries, n, k, masks, rows)


def product_topk(
    storage: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    masks: QueryMasks,
    path: str,
    chunk_rows: int | None = None,
    step_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products of float32 ``queries`` with the stored rows, on ``path``.

    Args:
        storage: (N, D) stored rows.
        queries: (Q, D) float32 queries on the rows' device.
        k: entries per query.
        masks: exclusions and restrictions.
        path: ``fp32``, ``fp16`` or ``bf16`` (``faiss`` is served by ``cir.index.faiss_backend``).
        chunk_rows: rows per chunk ranked at once (default: ``default_chunk_rows``).
        step_rows: rows converted and multiplied at a time when the path converts the rows
            (default: a conversion buffer of ``BUFFER_VALUES``).

    Returns:
        ``(scores, positions)`` as :func:`cir.index.search.chunked_topk`; scores are exact
        float32 products with the stored rows.
    """
    dtype = COMPUTE_DTYPES[path]
    (n, d), q = storage.shape, queries.shape[0]
    converts = storage.dtype != dtype or path == "bf16"
    rows = chunk_rows or default_chunk_rows(q, n, d, converts=False)
    step = min(rows, step_rows or default_chunk_rows(q, n, d, converts=True))
    if path == "bf16":
        view = CenteredRows(storage, step)
        low = torch.cat([queries, -centers(storage, queries, k)[:, None]], 1).to(dtype)
    else:
        view, low = RowView(storage, dtype, step), queries.to(dtype)
    if converts and step < rows:  # convert in cache-sized steps, rank whole blocks
        scores, view = BlockScores(low, view, step, rows, masks), _no_rows
    else:
        scores = lambda a, b, g: low @ g.T  # noqa: E731
    if dtype == torch.float32:
        return chunked_topk(scores, view, q, n, k, masks, rows)
    wide = min(n, k + margin(path, k))
    _, candidates = chunked_topk(scores, view, q, n, wide, masks, rows)
    return rescore(queries, storage, candidates, k)


def _no_rows(start: int, stop: int) -> None:
    return None


class BlockScores:
    """Products of queries with rows ``[start, stop)``, converted step by step into one block.

    Converted rows are best multiplied in steps that fit the CPU caches, but the running top-k
    pays a few operations for every chunk it is handed: the block gathers the steps' products,
    so the top-k sees few, wide chunks (2 instead of 13 for 100 queries over 100k rows of 512
    values). Steps without a candidate row (restricted searches) are not converted.

    Args:
        low: (Q, D') queries in the compute dtype.
        view: the rows of a step in the compute dtype (at most ``step`` rows).
        step: rows converted and multiplied at a time.
        block_rows: the widest block asked for.
        masks: the search's exclusions and restrictions.
    """

    def __init__(self, low: torch.Tensor, view, step: int, block_rows: int, masks: QueryMasks):
        self.low, self.view, self.step, self.masks = low, view, step, masks
        self.block = torch.empty((low.shape[0], block_rows), dtype=low.dtype, device=low.device)

    def __call__(self, start: int, stop: int, _rows: None = None) -> torch.Tensor:
        out = self.block[:, : stop - start]
        for s in range(start, stop, self.step):
            e = min(stop, s + self.step)
            part = out[:, s - start : e - start]
            if self.masks.chunk_has_candidates(s, e):
                torch.mm(self.low, self.view(s, e).T, out=part)
            else:
                part.fill_(_NEG_INF)
        return out


SAMPLE_ROWS = 1024


def centers(storage: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Per query, an estimate of its k-th best score: the score of the same rank (scaled to the
    sample's size) among ``SAMPLE_ROWS`` rows spread over the gallery, in float32."""
    n = storage.shape[0]
    sample = storage[:: max(1, n // SAMPLE_ROWS)][:SAMPLE_ROWS].float()
    rank = min(len(sample), max(1, round(k * len(sample) / n)))
    return torch.topk(queries.float() @ sample.T, rank, dim=1).values[:, -1]


class CenteredRows:
    """Rows ``[start, stop)`` as bf16 with an extra column of ones, through reused buffers.

    Multiplied by queries extended with ``-c`` (``c`` near each query's k-th score), the products
    come out as ``q.x - c``, so bf16's 8 significant bits are spent on the distance to the k-th
    score rather than on the score itself, where candidates are told apart. On the CPU fp16 rows
    pass through a float32 buffer: two conversions there beat torch's direct fp16-to-bf16 one.
    """

    def __init__(self, storage: torch.Tensor, chunk_rows: int) -> None:
        (n, d), dev = storage.shape, storage.device
        self.storage, self.dim = storage, d
        self.buffer = torch.empty((min(chunk_rows, n), d + 1), dtype=torch.bfloat16, device=dev)
        self.buffer[:, d] = 1
        staged = storage.dtype == torch.float16 and dev.type == "cpu"
        self.stage = torch.empty((len(self.buffer), d), device=dev) if staged else None

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        rows = self.storage[start:stop]
        if self.stage is not None:
            rows = self.stage[: stop - start].copy_(rows)
        out = self.buffer[: stop - start]
        out[:, : self.dim].copy_(rows)
        return out


def rescore(
    queries: torch.Tensor, storage: torch.Tensor, positions: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 scores of candidate ``positions`` (-1: none), best ``k`` first.

    Queries are rescored in blocks, so the gathered candidate rows stay under
    ``RESCORE_VALUES`` values.
    """
    num_q, wide = positions.shape
    keep = min(k, wide)
    if num_q == 0 or wide == 0:
        return torch.empty(num_q, keep, device=storage.device), positions[:, :keep]
    block = max(1, RESCORE_VALUES // (wide * storage.shape[1]))
    values, kept = [], []
    for s in range(0, num_q, block):
        pos = positions[s : s + block]
        rows = storage[pos.clamp(min=0).reshape(-1)].float().reshape(*pos.shape, -1)
        exact = torch.bmm(rows, queries[s : s + block].float().unsqueeze(2)).squeeze(2)
        exact.masked_fill_(pos < 0, _NEG_INF)
        v, sel = torch.topk(exact, keep, dim=1)
        values.append(v)
        kept.append(pos.gather(1, sel).masked_fill(torch.isneginf(v), -1))
    return torch.cat(values), torch.cat(kept)
