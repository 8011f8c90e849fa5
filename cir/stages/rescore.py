"""``rescore``: re-order the top candidates by their similarity to another query embedding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cir.rerank.order import order_by_scores
from cir.stages._reorder import check_head, head_size, reorder, require_ranking
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import query_vector
from cir.types import QueryState


@dataclass(frozen=True)
class RescoreParams:
    query: str = "query"
    top_n: int = 50
    allow_encoder_mismatch: bool = False

    def __post_init__(self) -> None:
        check_head(self.top_n)


@register_stage
class Rescore(Stage):
    """Re-score the first ``top_n`` candidates with a second query and re-sort them.

    A two-stage search: a first ``retrieve`` filters the gallery with one query, then this stage
    scores only the kept candidates by the similarity of their gallery embeddings to the query
    embedding ``query`` (typically a ``fuse`` of several embeddings, so the score is their
    weighted sum of similarities) and sorts them by it, retrieval order breaking ties. Ranks after
    ``top_n`` keep their places and scores stay with positions; the new scores are kept in
    ``data.<instance>`` with the moves.

    Paper: MCoT-RE (Park and Lee, "MCoT-RE: Multi-Faceted Chain-of-Thought and Re-Ranking for
    Training-Free Zero-Shot Composed Image Retrieval", 2025): a modification-focused caption
    filters the candidates, then both captions and the reference image re-rank them.

    Example:
        >>> Rescore(query="rerank_query", top_n=50)
    """

    name = "rescore"
    Params = RescoreParams

    @property
    def inputs(self) -> tuple[Port, ...]:
        return (
            Port("ranking", "ranking", "the candidates, best first"),
            Port(f"embeddings.{self.params.query}", "vector", "the re-scoring query"),
        )

    @property
    def outputs(self) -> tuple[Port, ...]:
        return (
            Port("ranking", "ranking", "the re-ordered ranking"),
            Port(f"data.{self.instance}", "data", "new scores and moves"),
        )

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        index = ctx.require_index(self.instance)
        p = self.params
        for state in states:
            require_ranking(state, self.instance)
            index.check_encoder(state.encoders.get(p.query) or None, p.allow_encoder_mismatch)
            count = head_size(state, p.top_n)
            if count < 2:
                self.record(state).notes["skipped"] = "fewer than 2 candidates"
                continue
            ids = state.ranking.ids[:count]
            rows = torch.tensor([index.position(i) for i in ids], device=index.device)
            query = query_vector(state, p.query, self.instance).to(index.device)
            scores = (index.embeddings[rows].float() @ query).tolist()
            reorder(
                state,
                self.instance,
                order_by_scores(scores),
                count,
                scores=dict(zip(ids, scores, strict=True)),
            )
        return states
