"""``ensemble``: combine N target embeddings into one (plain mean, or LDRE's adaptive weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from cir.errors import DataError
from cir.scoring import ldre_ensemble, ldre_weights
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import embedding_matrix, put_embedding
from cir.types import QueryState


@dataclass(frozen=True)
class EnsembleParams:
    mode: Literal["mean", "ldre"] = "mean"
    input: str = "targets"
    captions: str = "captions"
    output: str = "target"
    scope: Literal["query_set", "per_query"] = "query_set"
    temperature: float = 0.04
    topk: int = 5
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")


@register_stage
class Ensemble(Stage):
    """Combine a query's N embeddings (one per sampled caption / edited caption) into one.

    ``mode: mean`` gives ``normalize(mean_i t_i)``. ``mode: ldre`` is LDRE's adaptive ensemble
    (Yang et al., "LDRE: LLM-based Divergent Reasoning and Ensemble for Zero-Shot Composed Image
    Retrieval", SIGIR 2024): slot i's edit ``t_i`` and reference caption ``b_i`` give
    ``d = max(0, b_i.G - t_i.G)`` over the gallery, ``r_i`` sums the ``topk`` largest values of
    ``d``, ``w = softmax(r / max(r) / temperature)``, and the query is ``sum_i w_i t_i``
    (written normalised; the direction is the reference's).

    ``scope: query_set`` (default, the reference code) sums ``r_i`` over the whole query set and
    shares one weight per slot: the stage then sees every query of the run at once, whatever the
    batch size. ``scope: per_query`` weights each query's slots by its own drops. When all drops
    are zero the weights are uniform (counted as a fallback).

    Example:
        >>> Ensemble(mode="ldre", input="targets", captions="captions", output="target")
    """

    name = "ensemble"
    Params = EnsembleParams
    outputs = (Port("embeddings.{output}", "vector", "the combined query"),)

    @property
    def inputs(self) -> tuple[Port, ...]:
        ports = [Port("embeddings.{input}", "vectors", "N target embeddings")]
        if self.params.mode == "ldre":
            ports.append(Port("embeddings.{captions}", "vectors", "the N captions behind them"))
        return tuple(ports)

    @property
    def whole_set(self) -> bool:
        """LDRE's slot weights are computed once over the whole query set."""
        return self.params.mode == "ldre" and self.params.scope == "query_set"

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        edits = [embedding_matrix(s, self.params.input) for s in states]
        if self.params.mode == "mean":
            combined = [F.normalize(e.mean(dim=0), dim=-1) for e in edits]
        else:
            combined = self._ldre(states, edits, ctx)
        for state, vec in zip(states, combined, strict=True):
            put_embedding(state, self.params.output, vec, state.encoders.get(self.params.input, ""))
        return states

    def _ldre(self, states, edits, ctx: Context) -> list[torch.Tensor]:
        p = self.params
        caps = [embedding_matrix(s, p.captions) for s in states]
        for s, e, c in zip(states, edits, caps, strict=True):
            if e.shape != c.shape:
                raise DataError(
                    f"query {s.query.id!r}: {e.shape[0]} {p.input} but {c.shape[0]} {p.captions}; "
                    "LDRE pairs edit i with caption i"
                )
        if p.scope == "query_set" and len({e.shape[0] for e in edits}) > 1:
            raise DataError(
                f"stage {self.instance!r}: queries have different numbers of {p.input} "
                f"({sorted({e.shape[0] for e in edits})}); scope query_set needs aligned slots, "
                "use scope: per_query"
            )
        top = self._top_drops(edits, caps, ctx)
        if p.scope == "query_set":
            weights, fallback = ldre_weights(torch.stack(top), p.temperature, per_query=False)
            pairs = [(weights, bool(fallback))] * len(states)
        else:
            pairs = []
            for t in top:
                w, fb = ldre_weights(t.unsqueeze(0), p.temperature, per_query=True)
                pairs.append((w[0], bool(fb[0])))
        out = []
        for state, e, (w, fb) in zip(states, edits, pairs, strict=True):
            record = self.record(state)
            record.notes["weights"] = [round(float(x), 6) for x in w]
            record.notes["weights_over_queries"] = len(states) if p.scope == "query_set" else 1
            if fb:
                record.fallbacks += 1
                record.notes["fallback"] = "all drops zero: uniform weights"
            out.append(F.normalize(ldre_ensemble(e.unsqueeze(0), w)[0], dim=-1))
        return out

    def _top_drops(self, edits, caps, ctx: Context) -> list[torch.Tensor]:
        """Per query, (N, k) largest ``max(0, b_i.G - t_i.G)`` per slot over the whole gallery.

        All slots of all queries are scored in one chunked pass over the gallery.
        """
        from cir.index import ProductScores

        index = ctx.require_index(self.instance)
        diff = torch.cat([c - e for e, c in zip(edits, caps, strict=True)]).to(index.device)
        rankings = index.topk(  # products on the index's fastest path; max(0, .) is monotone
            ProductScores(diff),
            diff.shape[0],
            k=self.params.topk,
            chunk_rows=self.params.chunk_rows,
        )
        values = torch.tensor([list(r.scores) for r in rankings], dtype=torch.float32)
        values = values.clamp_(min=0)
        return list(values.split([e.shape[0] for e in edits]))
