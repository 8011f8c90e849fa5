"""Chunked drivers: walk a gallery matrix chunk by chunk so memory follows the chunk size.

``GalleryIndex.topk`` does the same over an index; these work on a plain tensor (tests,
benchmarks, and users with their own embeddings). A ``score_fn(start, stop, chunk)`` receives
the float32 rows ``[start, stop)`` on the compute device and returns (Q, stop - start) scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

ScoreFn = Callable[[int, int, torch.Tensor], torch.Tensor]

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

    Args:
        score_fn: ``(start, stop, chunk) -> (Q, stop - start)`` scores.
        gallery: (N, D) embeddings, any float dtype, any device.
        k: results per query (at most N).
        chunk_size: gallery rows scored at once; peak memory is about Q x chunk_size scores.
        exclude: optional (Q,) global row per query to drop (-1 for none).
        device: compute device (default: the gallery's).

    Returns:
        ``(scores, rows)``, both (Q, min(k, N)), best first.
    """
    best_scores = best_rows = None
    for start, stop, chunk in iter_chunks(gallery, chunk_size, device):
        scores = score_fn(start, stop, chunk)
        if exclude is not None:
            local = exclude.to(scores.device) - start
            hit = (local >= 0) & (local < stop - start)
            rows = torch.nonzero(hit).squeeze(1)
            scores[rows, local[rows]] = -torch.inf
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        rows = top.indices + start
        if best_scores is None:
            best_scores, best_rows = top.values, rows
            continue
        merged = torch.cat([best_scores, top.values], dim=1)
        keep = merged.topk(min(k, merged.shape[1]), dim=1)
        best_scores = keep.values
        best_rows = torch.cat([best_rows, rows], dim=1).gather(1, keep.indices)
    if best_scores is None:
        raise ValueError("the gallery is empty")
    return best_scores, best_rows


def chunked_scores(
    score_fn: ScoreFn,
    gallery: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """All (Q, N) scores, assembled chunk by chunk (for small galleries and tests)."""
    parts = [score_fn(s, e, c) for s, e, c in iter_chunks(gallery, chunk_size, device)]
    return torch.cat(parts, dim=1)
