"""``retrieve``: rank the gallery for each query and keep the top k."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from cir.errors import DataError
from cir.index.search import ProductScores
from cir.scoring import apply_hub_penalty, hub_penalty
from cir.stages.base import Context, Port, Stage, register_stage
from cir.stages.retrieve.rules import GalleryRule, RuleInputs, make_rule
from cir.state import stack_vectors
from cir.types import QueryState


@dataclass(frozen=True)
class HubnessParams:
    """Hubness correction with a bank of generic caption embeddings (see docs/scoring.md).

    Attributes:
        method: ``inverted_softmax`` or ``csls``.
        bank: the index sidecar whose rows form the bank.
        bank_size: at most this many evenly spaced bank rows.
        temperature: inverted-softmax temperature.
        k: CSLS neighbourhood size.
    """

    method: Literal["inverted_softmax", "csls"] = "inverted_softmax"
    bank: str = "captions"
    bank_size: int = 4096
    temperature: float = 0.05
    k: int = 10

    def __post_init__(self) -> None:
        if self.bank_size < 1 or self.k < 1 or self.temperature <= 0:
            raise ValueError("hubness bank_size and k must be >= 1, temperature > 0")


@dataclass(frozen=True)
class RetrieveParams:
    query: str = "query"
    k: int = 50
    exclude_reference: bool = False
    restrict_key: str | None = None
    allow_encoder_mismatch: bool = False
    rule: str = "dot"
    rule_params: dict[str, Any] = field(default_factory=dict)
    hubness: HubnessParams | None = None
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")


@register_stage
class Retrieve(Stage):
    """Score the index with a query embedding and keep the best ``k`` gallery ids.

    ``exclude_reference`` drops the query's own ``reference_id`` from its ranking (CIRR's
    protocol); ``restrict_key`` names a ``Query.extras`` entry listing the only ids to rank
    (CIRR's subset protocol). All queries of a batch are scored in one chunked pass.

    ``rule`` picks a gallery scoring rule from ``cir.stages.retrieve.rules`` (``dot``: cosine, the
    default; ``weimocir``, ``seize``, ``basic``, ``multi_grained``, ``intersection``), configured
    by ``rule_params``. ``hubness``
    (a mapping, see :class:`HubnessParams`) corrects gallery hubs with a bank of generic caption
    embeddings: ``inverted_softmax`` or ``csls`` (see ``docs/scoring.md``; no published CIR
    pipeline uses it).

    Example:
        >>> Retrieve(query="query", k=50, exclude_reference=True)
        >>> Retrieve(query="query", rule="weimocir", rule_params={"beta": 0.1})
        >>> Retrieve(query="query", hubness={"method": "csls", "k": 10})
    """

    name = "retrieve"
    Params = RetrieveParams
    outputs = (Port("ranking", "ranking", "gallery ids best first"),)

    def __init__(self, instance: str | None = None, **params: Any) -> None:
        super().__init__(instance, **params)
        where = f"stage {self.instance!r}"
        self.rule: GalleryRule = make_rule(self.params.rule, self.params.rule_params, where)

    @property
    def inputs(self) -> tuple[Port, ...]:
        return tuple(
            _port(name, self.rule.holds_many(name)) for name in self.rule.reads(self.params.query)
        )

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        index = ctx.require_index(self.instance)
        if self.params.rule != "dot" or self.params.hubness is not None:
            exact_rules = index.backend is None  # faiss's own ivf serves plain search only
            return self._mark(self._run_rule(states, index), None if exact_rules else index)
        name = self.params.query
        queries = stack_vectors(states, name, self.instance, index.device)
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
        return self._mark(states, index)

    def _mark(self, states: list[QueryState], index) -> list[QueryState]:
        """Say in the trace when the ranking came from an approximate backend."""
        if index is not None and index.approximate is not None:
            for state in states:
                self.record(state).notes["approximate"] = index.approximate
        return states

    def _run_rule(self, states: list[QueryState], index) -> list[QueryState]:
        name = self.params.query
        index.check_encoder(states[0].encoders.get(name), self.params.allow_encoder_mismatch)
        view, restrict = self._view(states, index)
        inputs = RuleInputs(
            states=states,
            query=name,
            sidecar=view.sidecar,
            reference_row=lambda i: _reference_row(view, states[i]),
            fallback=lambda i, why: self._fallback(states[i], why),
            device=view.device,
            gallery=view.embeddings,
            whole_gallery=index.embeddings,
        )
        score_fn = self._with_hubness(self.rule.build(inputs), view, index)
        if isinstance(score_fn, ProductScores):  # plain products: the backend ranks them itself
            view, restrict = index, self._restrict(states)
        rankings = view.topk(
            score_fn,
            len(states),
            k=self.params.k,
            exclude=self._exclude(states),
            restrict=restrict,
            chunk_rows=self.params.chunk_rows,
        )
        for state, ranking in zip(states, rankings, strict=True):
            state.ranking = ranking
            self.record(state).notes["rule"] = self.params.rule
        return states

    def _view(self, states: list[QueryState], index):
        """The index to score (a sub-index of ANN candidates on an approximate backend)."""
        from cir.index.candidates import candidate_view

        if index.approximate is None:
            return index, self._restrict(states)
        probes = [self._probes(s, index.dim) for s in states]
        width = max(self.params.k, getattr(index.backend, "rescore", self.params.k))
        refs = [s.query.reference_id for s in states if s.query.reference_id]
        return candidate_view(index, probes, width, self._restrict(states), refs)

    def _probes(self, state: QueryState, dim: int) -> torch.Tensor:
        """Every query vector the rule reads that lives in the gallery's space."""
        from cir.state import embedding_matrix

        names = [f.removeprefix("embeddings.") for f in self.rule.reads(self.params.query)]
        found = [embedding_matrix(state, n) for n in names if n in state.embeddings]
        found = [m for m in found if m.shape[-1] == dim]
        return torch.cat(found) if found else torch.empty(0, dim)

    def _with_hubness(self, score_fn, view, index):
        hub = self.params.hubness
        if hub is None:
            return score_fn
        penalty = self._hub_penalty(view, index, hub)

        def corrected(start: int, stop: int, chunk: torch.Tensor) -> torch.Tensor:
            scores = score_fn(start, stop, chunk)
            return apply_hub_penalty(scores, penalty[start:stop], hub.method, hub.temperature)

        return corrected

    def _hub_penalty(self, view, index, hub: HubnessParams) -> torch.Tensor:
        """Each scored item's bank term, computed once per index (it ignores the queries); the
        bank comes from the whole index, the items from ``view`` (the index or its candidates)."""
        key = (id(view), len(view), view.sidecars)
        cached = getattr(self, "_penalty", None)
        if view is index and cached is not None and cached[0] == key:
            return cached[1]
        bank = hubness_bank(index, hub.bank, hub.bank_size)
        rows = view.embeddings
        parts = [
            hub_penalty(bank, rows[s : s + 65536].float(), hub.method, hub.temperature, hub.k)
            for s in range(0, len(view), 65536)
        ]
        penalty = torch.cat(parts)
        if view is index:  # a candidate view is new for every batch
            self._penalty = (key, penalty)
        return penalty

    def _fallback(self, state: QueryState, reason: str) -> None:
        record = self.record(state)
        record.fallbacks += 1
        record.notes["fallback"] = reason

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


def hubness_bank(index, name: str, size: int) -> torch.Tensor:
    """At most ``size`` evenly spaced, normalised rows of sidecar ``name`` as an (M, D) bank."""
    tensor, _ = index.sidecar(name)
    flat = tensor.reshape(-1, tensor.shape[-1])
    if flat.shape[-1] != index.dim:
        raise DataError(
            f"hubness bank {name!r} has dimension {flat.shape[-1]}, the index {index.dim}; "
            "use text embeddings made by the index's encoder"
        )
    if flat.shape[0] > size:
        flat = flat[torch.linspace(0, flat.shape[0] - 1, size).long().to(flat.device)]
    return F.normalize(flat.float(), dim=-1)


def _port(name: str, many: bool = False) -> Port:
    if not name.startswith("embeddings."):
        return Port(name, "data", "read by the scoring rule")
    return Port(name, "vectors" if many else "vector", "read by the scoring rule")


def _reference_row(index, state: QueryState) -> int | None:
    ref = state.query.reference_id
    return index.position(ref) if ref is not None and index.has(ref) else None
