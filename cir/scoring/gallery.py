"""Gallery-side scores: one chunk of gallery embeddings against a batch of query-side tensors.

Each function returns a (Q, n) score matrix for a gallery chunk of n rows, so a chunked driver
(``cir.scoring.chunked_topk`` or ``GalleryIndex.topk``) keeps memory bounded by the chunk size.
"""

from __future__ import annotations

import torch


def dot_scores(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Plain similarity ``q . G^T``: (Q, D) x (n, D) -> (Q, n)."""
    return query @ gallery.T.to(query.dtype)


def weimocir_scores(
    query: torch.Tensor,
    gallery: torch.Tensor,
    gallery_captions: torch.Tensor | None = None,
    caption_queries: torch.Tensor | None = None,
    beta: float = 0.1,
) -> torch.Tensor:
    """WeiMoCIR similarity ``(1 - beta) q.G^T + beta * mean_k(q_k . C_k^T)``.

    Wu et al., "Training-free Zero-shot Composed Image Retrieval via Weighted Modality Fusion and
    Similarity" (TAAI 2024).

    Args:
        query: fused queries ``q`` (Q, D), normalised.
        gallery: gallery image embeddings (n, D), normalised.
        gallery_captions: the gallery's K caption embeddings (n, K, D), normalised; required
            when ``beta > 0``.
        caption_queries: per-caption queries ``q_k`` (Q, K, D), normalised (the reference code's
            form, built from the reference image's own k-th caption); None uses ``q_k = q``
            (the paper's form).
        beta: weight of the caption similarity.

    Returns:
        Scores (Q, n).
    """
    scores = (1.0 - beta) * dot_scores(query, gallery)
    if beta == 0:
        return scores
    if gallery_captions is None:
        raise ValueError("WeiMoCIR with beta > 0 needs the gallery caption embeddings")
    captions = gallery_captions.to(query.dtype)
    n, k, dim = captions.shape
    if caption_queries is None:
        caption_term = query @ captions.mean(dim=1).T
    else:
        if caption_queries.shape[-2] != k:
            raise ValueError(
                f"caption queries have {caption_queries.shape[-2]} captions per query but the "
                f"gallery has {k} per image"
            )
        flat_q = caption_queries.reshape(caption_queries.shape[0], k * dim).to(query.dtype)
        caption_term = (flat_q @ captions.reshape(n, k * dim).T) / k
    return scores + beta * caption_term


def seize_scores(
    edit: torch.Tensor,
    caption: torch.Tensor,
    gallery: torch.Tensor,
    lambda_neg: float = 2.1,
    lambda_pos: float = 0.13,
) -> torch.Tensor:
    """SEIZE's semantic editing increment ``t.G + l_neg min(0, ds) + l_pos max(0, ds)``.

    Yang et al., "Semantic Editing Increment Benefits Zero-Shot Composed Image Retrieval"
    (ACM MM 2024), with ``ds = t.G^T - c.G^T``.

    Args:
        edit: ``t = normalize(mean_i E_T(edit_i))`` (Q, D).
        caption: ``c = normalize(mean_i E_T(caption_i))`` (Q, D).
        gallery: gallery image embeddings (n, D).
        lambda_neg: weight of the decrease (the default is the paper's CIRCO value).
        lambda_pos: weight of the increase.

    Returns:
        Scores (Q, n).
    """
    after = dot_scores(edit, gallery)
    increment = dot_scores(caption, gallery).neg_().add_(after)  # in place: chunk-sized memory
    after.add_(increment.clamp(max=0).mul_(lambda_neg))
    return after.add_(increment.clamp_(min=0).mul_(lambda_pos))


def set_positions(
    scores: torch.Tensor, positions: torch.Tensor, start: int, value: float
) -> torch.Tensor:
    """Set ``scores[q, positions[q] - start] = value`` where the position falls in this chunk.

    ``positions`` holds one global gallery row per query (-1 for none); used for SEIZE's option
    of scoring the reference image -1 instead of dropping it.
    """
    local = positions.to(scores.device) - start
    hit = (positions >= 0).to(scores.device) & (local >= 0) & (local < scores.shape[1])
    rows = torch.nonzero(hit).squeeze(1)
    scores[rows, local[rows]] = value
    return scores


def twin_scores(query: torch.Tensor, gallery: torch.Tensor, twins: torch.Tensor) -> torch.Tensor:
    """Similarity to each gallery image joined with its synthetic twin: ``q . normalize(g + t)``.

    Paracosm (Wang, Zhao and Kong, Generating a Paracosm for Training-Free Zero-Shot Composed
    Image Retrieval, arXiv 2602.00813) represents a gallery image by the sum of its normalised
    embedding and that of a picture drawn from its detailed caption, normalised again.

    Args:
        query: queries (Q, D).
        gallery: gallery image embeddings (n, D), normalised.
        twins: the twins' image embeddings (n, D), normalised, row i drawn from image i.

    Returns:
        Scores (Q, n).
    """
    joined = torch.nn.functional.normalize(gallery.float() + twins.float(), dim=-1)
    return query @ joined.T.to(query.dtype)
