"""Hubness correction of gallery scores with a bank of queries (training-free).

A hub is a gallery item close to many queries: it then crowds every ranking. Both corrections
here subtract from each gallery item's score a term measuring how close it is to a bank of
generic queries (for example text embeddings of generic captions), so a hub loses its lead.

- Inverted softmax (Smith et al., "Offline bilingual word vectors, orthogonal transformations
  and the inverted softmax", ICLR 2017; Bogolin et al., "Cross Modal Retrieval with Querybank
  Normalisation", CVPR 2022): ``s / T - logsumexp_b(s_b / T)``, the log of
  ``exp(s / T) / sum_b exp(s_b / T)``.
- CSLS (Conneau et al., "Word translation without parallel data", ICLR 2018):
  ``2 s - r_g`` where ``r_g`` is the mean of the gallery item's k largest bank similarities
  (the query's own term is the same for every gallery item, so it does not change a ranking).
"""

from __future__ import annotations

import torch

HUBNESS_METHODS = ("none", "inverted_softmax", "csls")


def inverted_softmax(
    scores: torch.Tensor, bank_scores: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """``scores / T - logsumexp(bank_scores / T)`` over the bank: (Q, n), (M, n) -> (Q, n)."""
    return scores / temperature - torch.logsumexp(bank_scores / temperature, dim=0)


def csls(scores: torch.Tensor, bank_scores: torch.Tensor, k: int = 10) -> torch.Tensor:
    """``2 * scores - mean(top-k bank similarities of each gallery item)``."""
    top = bank_scores.topk(min(k, bank_scores.shape[0]), dim=0).values
    return 2.0 * scores - top.mean(dim=0)


def hub_penalty(
    bank: torch.Tensor,
    gallery: torch.Tensor,
    method: str = "inverted_softmax",
    temperature: float = 0.05,
    k: int = 10,
) -> torch.Tensor:
    """The per-gallery-item term a correction subtracts: (n,) for a chunk of n items.

    It does not depend on the queries, so it can be computed once per gallery and reused.
    """
    _check(method)
    bank_scores = bank.to(gallery.dtype) @ gallery.T
    if method == "inverted_softmax":
        return torch.logsumexp(bank_scores / temperature, dim=0)
    if method == "csls":
        return bank_scores.topk(min(k, bank_scores.shape[0]), dim=0).values.mean(dim=0)
    return torch.zeros(gallery.shape[0], dtype=gallery.dtype, device=gallery.device)


def apply_hub_penalty(
    scores: torch.Tensor, penalty: torch.Tensor, method: str, temperature: float = 0.05
) -> torch.Tensor:
    """Corrected scores from a rule's scores (Q, n) and ``hub_penalty`` (n,)."""
    _check(method)
    penalty = penalty.to(scores)
    if method == "inverted_softmax":
        return scores / temperature - penalty
    if method == "csls":
        return 2.0 * scores - penalty
    return scores


def correct_hubs(
    scores: torch.Tensor,
    bank: torch.Tensor,
    gallery: torch.Tensor,
    method: str = "inverted_softmax",
    temperature: float = 0.05,
    k: int = 10,
) -> torch.Tensor:
    """Apply a hubness correction to the scores of one gallery chunk.

    Args:
        scores: the rule's scores (Q, n).
        bank: the query bank (M, D), normalised.
        gallery: the gallery chunk (n, D).
        method: one of ``HUBNESS_METHODS``.
        temperature: inverted softmax temperature.
        k: CSLS neighbourhood size.
    """
    if method == "none":
        return scores
    penalty = hub_penalty(bank, gallery.to(scores.dtype), method, temperature, k)
    return apply_hub_penalty(scores, penalty, method, temperature)


def _check(method: str) -> None:
    if method not in HUBNESS_METHODS:
        raise ValueError(f"unknown hubness method {method!r}; valid: {', '.join(HUBNESS_METHODS)}")
