"""Intersection-driven fusion: a candidate must be close to the reference image *and* the text.

SETR (Xiao and Zhu, "SETR: A Two-Stage Semantic-Enhanced Framework for Zero-Shot Composed Image
Retrieval", 2025) replaces union-style fusion, where any strong cue (often the reference's
background) can carry a candidate, by a coarse stage that keeps only what the reference image and
the text share. cir reads this at the level of similarities: each query's image similarity
``v.g`` and text similarity ``t.g`` are standardised over the whole gallery (z-scores with the
query's own mean and standard deviation), and a candidate scores the smaller of the two (a soft
AND). ``combine="sum"`` gives the union counterpart on the same scale, for comparison.
"""

from __future__ import annotations

from typing import Literal

import torch

Combine = Literal["min", "sum"]
COMBINES = ("min", "sum")
MIN_STD = 1e-6
DEFAULT_CHUNK_ROWS = 65536


def similarity_moments(
    queries: torch.Tensor, gallery: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each query's similarities over the gallery, chunk by chunk.

    Args:
        queries: (Q, D) query embeddings.
        gallery: (N, D) gallery embeddings (any float dtype, any device).
        chunk_rows: gallery rows per matmul (memory is Q x chunk_rows).

    Returns:
        Two (Q,) float32 tensors: the mean and the (population) standard deviation.

    Example:
        >>> mean, std = similarity_moments(q, index.embeddings)
    """
    if gallery.shape[0] == 0:
        raise ValueError("the gallery is empty: no similarity statistics")
    q = queries.float()
    total = torch.zeros(q.shape[0], dtype=torch.float64, device=q.device)
    squares = torch.zeros_like(total)
    for start in range(0, gallery.shape[0], chunk_rows):
        sims = (q @ gallery[start : start + chunk_rows].to(q.device, torch.float32).T).double()
        total += sims.sum(dim=1)
        squares += (sims * sims).sum(dim=1)
    n = gallery.shape[0]
    mean = total / n
    var = (squares / n - mean * mean).clamp(min=0.0)
    return mean.float(), var.sqrt().float()


def standardize(scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(scores - mean) / std`` per query row ((Q, n) scores, (Q,) statistics)."""
    return (scores - mean[:, None]) / std.clamp(min=MIN_STD)[:, None]


def intersection_scores(
    image: torch.Tensor,
    text: torch.Tensor,
    gallery: torch.Tensor,
    image_moments: tuple[torch.Tensor, torch.Tensor],
    text_moments: tuple[torch.Tensor, torch.Tensor],
    combine: Combine = "min",
) -> torch.Tensor:
    """``min(z(v.g), z(t.g))`` (or their sum) for a gallery chunk.

    Args:
        image: reference image embeddings (Q, D).
        text: text query embeddings (Q, D).
        gallery: a gallery chunk (n, D).
        image_moments: the image similarities' (mean, std) over the whole gallery.
        text_moments: the text similarities' (mean, std) over the whole gallery.
        combine: ``min`` (intersection) or ``sum`` (union, on the same scale).

    Returns:
        Scores (Q, n).
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    g = gallery.to(image.device, torch.float32)
    z_image = standardize(image.float() @ g.T, *image_moments)
    z_text = standardize(text.float() @ g.T, *text_moments)
    return torch.minimum(z_image, z_text) if combine == "min" else z_image + z_text
