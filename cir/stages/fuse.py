"""``fuse``: a weighted sum of named embeddings, L2-normalised (WeiMoCIR's query fusion)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import put_embedding, query_vector, shared_encoder
from cir.types import QueryState


@dataclass(frozen=True)
class FuseParams:
    inputs: tuple[str, ...] = ("image", "text")
    weights: tuple[float, ...] | None = None
    alpha: float = 0.8
    output: str = "query"

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs must name at least one embedding")
        if self.weights is not None and len(self.weights) != len(self.inputs):
            raise ValueError(
                f"weights has {len(self.weights)} values for {len(self.inputs)} inputs"
            )
        if self.weights is None and len(self.inputs) != 2:
            raise ValueError("give `weights` (one per input) when fusing other than two inputs")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha}")

    def resolved_weights(self) -> tuple[float, ...]:
        """The weight of each input: ``weights`` if given, else ``(1 - alpha, alpha)``."""
        return self.weights if self.weights is not None else (1.0 - self.alpha, self.alpha)


@register_stage
class Fuse(Stage):
    """``q = normalize(sum_i w_i * e_i)`` over named embeddings.

    With the defaults (inputs image and text, ``alpha`` 0.8) this is the query of WeiMoCIR
    (Wu et al., "Training-free Zero-shot Composed Image Retrieval via Weighted Modality Fusion
    and Similarity", 2024): ``normalize((1 - alpha) * image + alpha * text)``.

    Example:
        >>> Fuse(alpha=0.8)                                   # image + text
        >>> Fuse(inputs=["image", "text", "target"], weights=[0.2, 0.3, 0.5])
    """

    name = "fuse"
    Params = FuseParams
    outputs = (Port("embeddings.{output}", "vector", "the fused query"),)

    @property
    def inputs(self) -> tuple[Port, ...]:
        return tuple(
            Port(f"embeddings.{n}", "vector", "an embedding to fuse") for n in self.params.inputs
        )

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        p = self.params
        weights = p.resolved_weights()
        for state in states:
            encoder = shared_encoder([state], p.inputs, self.instance)
            vectors = [query_vector(state, name, self.instance) for name in p.inputs]
            total = sum(w * v for w, v in zip(weights, vectors, strict=True))
            put_embedding(state, p.output, F.normalize(total, dim=-1), encoder)
            self.record(state).notes["weights"] = dict(zip(p.inputs, weights, strict=True))
        return states
