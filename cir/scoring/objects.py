"""Object-scale scores: how much a gallery image shows the objects that must, or must not, appear.

CoTMR (Sun, Jing and Lu, "CoTMR: Chain-of-Thought Multi-Scale Reasoning for Training-Free
Zero-Shot Composed Image Retrieval", ICCV 2025) reasons at two scales: an image-scale target
caption and object-scale lists of the objects the target must contain and must not contain. Its
Multi-Grained Scoring adds to the caption's CLIP similarity a reward for the present objects and
a penalty for the absent ones:

    s(g) = c.g + w_present * agg_o(p_o.g) - w_absent * agg_o(a_o.g)

with ``agg`` the mean (the default) or the maximum over the listed objects; an empty list adds
nothing. The weights and the aggregate are cir's choices (see ``docs/methods.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Aggregate = Literal["mean", "max"]
AGGREGATES = ("mean", "max")


def object_scores(
    objects: torch.Tensor, gallery: torch.Tensor, aggregate: Aggregate = "mean"
) -> torch.Tensor:
    """One object-list score per gallery image: ``agg_o(objects_o . g)``.

    Args:
        objects: the listed objects' text embeddings (O, D), normalised; O may be 0.
        gallery: gallery image embeddings (n, D).
        aggregate: ``mean`` or ``max`` over the objects.

    Returns:
        Scores (n,); zeros when the list is empty.

    Example:
        >>> object_scores(torch.eye(2), torch.tensor([[1.0, 0.0]]))
        tensor([0.5000])
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if objects.shape[0] == 0:
        return gallery.new_zeros(gallery.shape[0], dtype=torch.float32)
    sims = objects.float() @ gallery.float().T  # (O, n)
    return sims.mean(dim=0) if aggregate == "mean" else sims.max(dim=0).values


def multi_grained_scores(
    caption: torch.Tensor,
    present: Sequence[torch.Tensor],
    absent: Sequence[torch.Tensor],
    gallery: torch.Tensor,
    w_present: float = 0.5,
    w_absent: float = 0.5,
    aggregate: Aggregate = "mean",
) -> torch.Tensor:
    """CoTMR's multi-grained score of a gallery chunk for a batch of queries.

    Args:
        caption: the target captions' embeddings (Q, D).
        present: per query, the embeddings of the objects that must appear (O_i, D).
        absent: per query, the embeddings of the objects that must not appear (M_i, D).
        gallery: gallery image embeddings (n, D).
        w_present: weight of the reward for present objects.
        w_absent: weight of the penalty for absent objects.
        aggregate: ``mean`` or ``max`` over each object list.

    Returns:
        Scores (Q, n).
    """
    if not len(present) == len(absent) == caption.shape[0]:
        raise ValueError(
            f"{caption.shape[0]} captions need as many present and absent object lists, got "
            f"{len(present)} and {len(absent)}"
        )
    scores = caption.float() @ gallery.float().T
    for i, (pos, neg) in enumerate(zip(present, absent, strict=True)):
        if w_present and pos.shape[0]:
            scores[i] += w_present * object_scores(pos, gallery, aggregate)
        if w_absent and neg.shape[0]:
            scores[i] -= w_absent * object_scores(neg, gallery, aggregate)
    return scores
