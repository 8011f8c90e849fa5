"""Scores of the re-rankers that check candidates one by one with a language model.

- ImageScope (Luo et al., "ImageScope: Unifying Language-Guided Image Retrieval via Large
  Multimodal Model Collective Reasoning", WWW 2025): a candidate's verification score is the
  number of atomic yes/no propositions whose answer matches the expected one
  (:func:`proposition_matches`); the evaluator then moves the first candidate it accepts to the
  top (:func:`promote_first`).
- SC4CIR (Yang et al., "Never Seen Before: Benchmarking Genuine Zero-Shot Composed Image
  Retrieval with Consistent Video-Sourced Datasets", 2026): a candidate's score is its original
  similarity plus two symmetric consistency similarities (:func:`consistency_scores`), the first
  of which comes from the reverse query (:func:`reverse_query_similarity`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def proposition_matches(answers: Sequence[bool | None], expected: Sequence[bool]) -> int:
    """How many answers equal the expected ones (an unreadable answer, None, matches nothing).

    Example:
        >>> proposition_matches([True, False, None], [True, True, False])
        1
    """
    if len(answers) != len(expected):
        raise ValueError(f"{len(answers)} answers for {len(expected)} propositions")
    return sum(a is not None and a == e for a, e in zip(answers, expected, strict=True))


def promote_first(verdicts: Sequence[bool | None]) -> list[int]:
    """The order that puts the first accepted candidate first and keeps the others in place.

    Example:
        >>> promote_first([False, None, True, True])
        [2, 0, 1, 3]
    """
    for position, verdict in enumerate(verdicts):
        if verdict:
            rest = [i for i in range(len(verdicts)) if i != position]
            return [position, *rest]
    return list(range(len(verdicts)))


def reverse_query_similarity(
    candidates: torch.Tensor, reverse_text: torch.Tensor, reference: torch.Tensor, alpha: float
) -> torch.Tensor:
    """How well each candidate, edited back by the reverse text, returns to the reference.

    The reverse query of candidate ``c`` is ``q_c = normalize((1 - alpha) c + alpha r)`` (the
    fused image-text query of WeiMoCIR) with ``r`` the embedding of the text that turns the
    target back into the reference; its score is ``q_c . v`` with ``v`` the reference image.

    Args:
        candidates: candidate image embeddings (n, D), normalised.
        reverse_text: the reverse text's embedding (D,), normalised.
        reference: the reference image's embedding (D,), normalised.
        alpha: weight of the text in the reverse query.

    Returns:
        Similarities (n,).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    fused = (1.0 - alpha) * candidates.float() + alpha * reverse_text.float()[None]
    return F.normalize(fused, dim=-1) @ reference.float()


def consistency_scores(
    original: torch.Tensor,
    checks: Sequence[torch.Tensor],
    weights: Sequence[float],
) -> torch.Tensor:
    """SC4CIR's re-ranking score: ``w_0 s_original + sum_j w_j s_check_j``.

    The released code adds the unweighted similarities (all weights 1).

    Args:
        original: the candidates' retrieval scores (n,).
        checks: one (n,) similarity per consistency check run.
        weights: one weight for the original score, then one per check.
    """
    if len(weights) != 1 + len(checks):
        raise ValueError(f"{len(weights)} weights for the original score and {len(checks)} checks")
    total = weights[0] * original.float()
    for weight, check in zip(weights[1:], checks, strict=True):
        total = total + weight * check.float()
    return total
