"""``pdv``: prompt directional vectors (PDV-T, PDV-I, PDV-F)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cir.scoring import pdv_auto_alpha_image, pdv_query, prompt_direction
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import put_embedding, shared_encoder, stack_vectors
from cir.types import QueryState


@dataclass(frozen=True)
class PDVParams:
    reference: str = "caption"
    composed: str = "target"
    image: str = "image"
    output: str = "query"
    alpha_image: float = 1.4
    alpha_text: float = 1.2
    beta: float = 0.75
    auto_alpha_image: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be within [0, 1], got {self.beta}")


@register_stage
class PDV(Stage):
    """Steer a query along the direction from the reference-only text to the composed text.

    Tursun et al., "Prompt Directional Vectors for Zero-shot Composed Image Retrieval" (2025).
    ``delta = normalize(E_T(composed)) - normalize(E_T(reference))``; PDV-T
    ``q_T = normalize(E_T(reference)) + alpha_text * delta``; PDV-I
    ``q_I = normalize(E_I(image)) + alpha_image * delta``; PDV-F
    ``normalize((1 - beta) q_I + beta q_T)``. In a caption pipeline the composed text is the
    target description and the reference text the reference caption. ``beta: 1`` with
    ``alpha_text: 1`` gives back the base pipeline's query exactly (and reads no image).
    ``auto_alpha_image`` picks ``alpha_image`` per query minimising ``||q_I - q_T||`` (the
    paper's automatic variant); the value used is noted in the trace.

    Example:
        >>> PDV(reference="caption", composed="target", beta=0.75, alpha_image=1.4, alpha_text=1.2)
    """

    name = "pdv"
    Params = PDVParams
    outputs = (Port("embeddings.{output}", "vector", "the steered query"),)

    @property
    def _uses_image(self) -> bool:
        return self.params.beta < 1.0

    @property
    def inputs(self) -> tuple[Port, ...]:
        ports = [
            Port("embeddings.{reference}", "vector", "text of the reference alone"),
            Port("embeddings.{composed}", "vector", "text of the composed target"),
        ]
        if self._uses_image:
            ports.append(Port("embeddings.{image}", "vector", "the reference image"))
        return tuple(ports)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        p = self.params
        ref = stack_vectors(states, p.reference, self.instance)
        comp = stack_vectors(states, p.composed, self.instance)
        image = stack_vectors(states, p.image, self.instance) if self._uses_image else None
        alpha = p.alpha_image
        if p.auto_alpha_image and image is not None:
            alpha = pdv_auto_alpha_image(image, ref, prompt_direction(comp, ref), p.alpha_text)
        queries = pdv_query(image, ref, comp, alpha, p.alpha_text, p.beta)
        names = [p.reference, p.composed] + ([p.image] if self._uses_image else [])
        key = shared_encoder(states, names, self.instance)
        for i, state in enumerate(states):
            put_embedding(state, p.output, queries[i], key)
            a = float(alpha[i]) if isinstance(alpha, torch.Tensor) else alpha
            self.record(state).notes["alpha_image"] = round(a, 6)
        return states
