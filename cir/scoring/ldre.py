"""LDRE's adaptive ensemble of N edited captions, weighted by how much each one drifts.

Yang et al., "LDRE: LLM-based Divergent Reasoning and Ensemble for Zero-Shot Composed Image
Retrieval" (SIGIR 2024). For caption slot i with edit embedding ``t_i`` and reference-caption
embedding ``b_i``, ``d = max(0, b_i.G^T - t_i.G^T)``; ``r_i`` sums the top-k values of ``d`` (over
the gallery) for every query; ``w = softmax(r / max(r) / temperature)`` and the query is
``sum_i w_i t_i``.
"""

from __future__ import annotations

import torch


def ldre_divergence_topk(
    edits: torch.Tensor, captions: torch.Tensor, gallery: torch.Tensor, k: int = 5
) -> torch.Tensor:
    """Top-``k`` values of ``max(0, b_i.G^T - t_i.G^T)`` within one gallery chunk.

    Args:
        edits: edit embeddings ``t`` (Q, N, D), normalised.
        captions: reference-caption embeddings ``b`` (Q, N, D), normalised.
        gallery: a chunk of gallery embeddings (n, D).
        k: how many of the largest drops to keep (fewer when the chunk is smaller).

    Returns:
        (Q, N, min(k, n)) largest values, to be merged over chunks with ``merge_topk_values``.
    """
    g = gallery.to(edits.dtype)
    drop = ((captions - edits) @ g.T).clamp_(min=0)
    return drop.topk(min(k, drop.shape[-1]), dim=-1).values


def merge_topk_values(a: torch.Tensor | None, b: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest values of two partial top-k results along the last dimension."""
    if a is None:
        return b
    both = torch.cat([a, b], dim=-1)
    return both.topk(min(k, both.shape[-1]), dim=-1).values


def ldre_weights(
    top_values: torch.Tensor, temperature: float = 0.04, per_query: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot weights from the top drop values.

    Args:
        top_values: (Q, N, k) from ``ldre_divergence_topk`` over the whole gallery.
        temperature: softmax temperature (0.04 in the paper).
        per_query: False sums ``r_i`` over every query of the set and gives one weight per
            slot, shared by all queries (the reference code); True gives each query its own.

    Returns:
        ``(weights, fallback)``: weights (N,) or (Q, N); ``fallback`` is a bool tensor (scalar,
        or (Q,)) marking where every ``r_i`` was 0, so the division by ``max(r)`` is undefined;
        uniform weights are used there.
    """
    relevance = top_values.sum(dim=-1)  # (Q, N)
    if not per_query:
        relevance = relevance.sum(dim=0)  # (N,)
    peak = relevance.amax(dim=-1, keepdim=True)
    fallback = peak.squeeze(-1) <= 0
    scaled = relevance / peak.clamp_min(torch.finfo(relevance.dtype).tiny) / temperature
    weights = torch.softmax(scaled, dim=-1)
    uniform = torch.full_like(weights, 1.0 / weights.shape[-1])
    return torch.where(fallback.unsqueeze(-1), uniform, weights), fallback


def ldre_ensemble(edits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i t_i``: edits (Q, N, D), weights (N,) or (Q, N) -> (Q, D), not re-normalised.

    The reference code ranks with this sum as it is; its scale does not change a ranking.
    """
    if weights.dim() == 1:
        weights = weights.unsqueeze(0)
    return (edits * weights.to(edits.dtype).unsqueeze(-1)).sum(dim=-2)
