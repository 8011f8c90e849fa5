"""``retrieve``: rank the gallery for each query and keep the top k."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cir.errors import DataError
from cir.stages.base import Context, Stage, register_stage
from cir.stages.encode_text import as_query_vector
from cir.types import QueryState


@dataclass(frozen=True)
class RetrieveParams:
    query: str = "query"
    k: int = 50
    exclude_reference: bool = False
    restrict_key: str | None = None
    allow_encoder_mismatch: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@register_stage
class Retrieve(Stage):
    """Score the index with a query embedding and keep the best ``k`` gallery ids.

    ``exclude_reference`` drops the query's own ``reference_id`` from its ranking (CIRR's
    protocol); ``restrict_key`` names a ``Query.extras`` entry listing the only ids to rank
    (CIRR's subset protocol). All queries of a batch are scored in one chunked pass.

    Example:
        >>> Retrieve(query="query", k=50, exclude_reference=True)
    """

    name = "retrieve"
    Params = RetrieveParams

    @property
    def reads(self) -> tuple[str, ...]:
        return (f"embeddings.{self.params.query}",)

    writes = ("ranking",)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        index = ctx.require_index(self.instance)
        name = self.params.query
        queries = torch.stack(
            [as_query_vector(s.embeddings[name], name, self.instance) for s in states]
        )
        rankings = index.search(
            queries,
            k=self.params.k,
            exclude=self._exclude(states),
            restrict=self._restrict(states),
            encoder=states[0].encoders.get(name),
            allow_mismatch=self.params.allow_encoder_mismatch,
        )
        for state, ranking in zip(states, rankings, strict=True):
            state.ranking = ranking
        return states

    def _exclude(self, states: list[QueryState]) -> list[set[str]] | None:
        if not self.params.exclude_reference:
            return None
        return [{s.query.reference_id} if s.query.reference_id else set() for s in states]

    def _restrict(self, states: list[QueryState]) -> list[list[str]] | None:
        key = self.params.restrict_key
        if key is None:
            return None
        missing = [s.query.id for s in states if key not in s.query.extras]
        if missing:
            raise DataError(
                f"stage {self.instance!r} restricts rankings to Query.extras[{key!r}], "
                f"but queries {', '.join(missing[:5])} have no such entry"
            )
        return [list(s.query.extras[key]) for s in states]
