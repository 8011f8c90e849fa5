"""Chunked drivers over a plain gallery tensor, so memory follows the chunk size.

For tests, benchmarks and users with their own embeddings; ``GalleryIndex.topk`` does the same
over an index, and both run the one top-k driver of ``cir.index.search``. A
``score_fn(start, stop, chunk)`` receives the float32 rows ``[start, stop)`` on the compute
device and returns (Q, stop - start) scores.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cir.index.search import QueryMasks, ScoreFn
from cir.index.search import chunked_topk as index_chunked_topk

#: Gallery rows per chunk by default: 64k rows x 768 dims x 4 bytes is 200 MB.
DEFAULT_CHUNK = 65536


def iter_chunks(
    gallery: torch.Tensor, chunk_size: int = DEFAULT_CHUNK, device: str | torch.device | None = None
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, rows as float32 on device)`` for consecutive gallery chunks."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = device or gallery.device
    for start in range(0, gallery.shape[0], chunk_size):
        stop = min(start + chunk_size, gallery.shape[0])
        yield start, stop, gallery[start:stop].to(device=device, dtype=torch.float32)


def chunked_topk(
    score_fn: ScoreFn,
    gallery: torch.Tensor,
    k: int,
    chunk_size: int = DEFAULT_CHUNK,
    exclude: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery rows per query under ``score_fn``, one chunk at a time.

    A thin call into the driver behind ``GalleryIndex.search`` and ``GalleryIndex.topk``
    (:func:`cir.index.search.chunked_topk`), with the same semantics: excluded rows, rows scored
    -inf and NaN scores are never returned; missing results are padded with score -inf at row -1.

    Args:
        score_fn: ``(start, stop, chunk) -> (Q, stop - start)`` scores.
        gallery: (N, D) embeddings, any float dtype, any device.
        k: results per query (at most N).
        chunk_size: gallery rows scored at once; peak memory is about Q x chunk_size scores.
        exclude: optional (Q,) global row per query to drop (-1 for none).
        device: compute device (default: the gallery's).

    Returns:
        ``(scores, rows)``, both (Q, min(k, N)), best first.

    Raises:
        ValueError: an empty gallery, ``chunk_size`` < 1, or scores of the wrong shape.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if gallery.shape[0] == 0:
        raise ValueError("the gallery is empty")
    device = torch.device(device) if device is not None else gallery.device
    masks = QueryMasks.none() if exclude is None else QueryMasks.from_rows(exclude)
    num_queries = None if exclude is None else masks.num_queries

    def view(start: int, stop: int) -> torch.Tensor:
        return gallery[start:stop].to(device=device, dtype=torch.float32)

    n = gallery.shape[0]
    return index_chunked_topk(score_fn, view, num_queries, n, k, masks, chunk_size)


def chunked_scores(
    score_fn: ScoreFn,
    gallery: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """All (Q, N) scores, assembled chunk by chunk (for small galleries and tests)."""
    parts = [score_fn(s, e, c) for s, e, c in iter_chunks(gallery, chunk_size, device)]
    return torch.cat(parts, dim=1)
