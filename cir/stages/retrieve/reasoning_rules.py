"""Gallery scoring rules of the reasoning pipelines: CoTMR's multi-grained scoring and SETR-style
intersection fusion (selectable as ``retrieve`` ``rule: multi_grained`` / ``rule: intersection``).

Example:
    >>> rule = make_rule("multi_grained", {"w_present": 0.5, "w_absent": 0.5})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from cir.errors import ConfigError, DataError
from cir.scoring.chunked import ScoreFn
from cir.scoring.intersection import intersection_scores, similarity_moments
from cir.scoring.objects import multi_grained_scores
from cir.stages.retrieve.rules import GalleryRule, RuleInputs, register_rule


@dataclass(frozen=True)
class MultiGrainedParams:
    present: str = "present"
    absent: str = "absent"
    w_present: float = 0.5
    w_absent: float = 0.5
    aggregate: Literal["mean", "max"] = "mean"

    def __post_init__(self) -> None:
        if self.w_present < 0 or self.w_absent < 0:
            raise ValueError("w_present and w_absent must be >= 0")


@register_rule
class MultiGrainedRule(GalleryRule):
    """CoTMR's multi-grained scoring: the target caption's similarity, plus a reward for the
    objects that must appear and minus a penalty for those that must not (see
    :func:`cir.scoring.objects.multi_grained_scores`).

    The query embedding is the caption's; ``present`` and ``absent`` name per-query object
    matrices (``encode_text`` with ``combine: none``; an empty list is allowed).
    """

    name = "multi_grained"
    Params = MultiGrainedParams

    def reads(self, query: str) -> tuple[str, ...]:
        p = self.params
        return (f"embeddings.{query}", f"embeddings.{p.present}", f"embeddings.{p.absent}")

    def holds_many(self, field: str) -> bool:
        return field in (f"embeddings.{self.params.present}", f"embeddings.{self.params.absent}")

    def build(self, inputs: RuleInputs) -> ScoreFn:
        p = self.params
        caption = inputs.stacked(inputs.query)
        present = [self._objects(s, p.present, inputs.device) for s in inputs.states]
        absent = [self._objects(s, p.absent, inputs.device) for s in inputs.states]
        return lambda start, stop, chunk: multi_grained_scores(
            caption, present, absent, chunk, p.w_present, p.w_absent, p.aggregate
        )

    @staticmethod
    def _objects(state: Any, name: str, device: torch.device) -> torch.Tensor:
        from cir.state import embedding_matrix

        if name not in state.embeddings:
            raise DataError(
                f"query {state.query.id!r} has no embedding {name!r} of object phrases; encode "
                f"them with encode_text (combine: none, output: {name})"
            )
        return embedding_matrix(state, name).to(device)


@dataclass(frozen=True)
class IntersectionParams:
    image: str = "image"
    combine: Literal["min", "sum"] = "min"


@register_rule
class IntersectionRule(GalleryRule):
    """SETR-style intersection: ``min(z(v.g), z(t.g))`` with the image and text similarities
    standardised over the whole gallery per query (see :mod:`cir.scoring.intersection`).

    The query embedding is the text ``t``; ``image`` names the reference image embedding ``v``.
    ``combine: sum`` is the union counterpart on the same scale.
    """

    name = "intersection"
    Params = IntersectionParams

    def reads(self, query: str) -> tuple[str, ...]:
        return (f"embeddings.{query}", f"embeddings.{self.params.image}")

    def build(self, inputs: RuleInputs) -> ScoreFn:
        rows = inputs.statistics_rows
        if rows is None:
            raise ConfigError("the intersection rule needs the gallery embeddings")
        text, image = inputs.stacked(inputs.query), inputs.stacked(self.params.image)
        text_moments = similarity_moments(text, rows)
        image_moments = similarity_moments(image, rows)
        combine = self.params.combine
        return lambda start, stop, chunk: intersection_scores(
            image, text, chunk, image_moments, text_moments, combine
        )
