"""``encode_text``: CLIP text embeddings of the modification, captions or target descriptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from cir.errors import DataError
from cir.models.shared import resolve_encoder
from cir.stages._encoders import cached_embeddings, encoder_cache_parts
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import as_query_vector, count_cache, put_embedding
from cir.types import QueryState

__all__ = ["EncodeText", "as_query_vector"]

_SOURCES = ("query.text", "captions", "targets")


@dataclass(frozen=True)
class EncodeTextParams:
    source: str = "query.text"
    template: str = "{text}"
    output: str = "text"
    combine: Literal["none", "mean", "mean_raw"] = "mean"
    model: str | None = None
    pretrained: str | None = None
    batch_size: int = 256
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.source not in _SOURCES and not _is_data(self.source):
            raise ValueError(
                f"source must be one of {', '.join(_SOURCES)} or data.<key>, got {self.source!r}"
            )
        if "{text}" not in self.template:
            raise ValueError(f"template must contain '{{text}}', got {self.template!r}")


@register_stage
class EncodeText(Stage):
    """Embed text with the CLIP text tower.

    ``source`` picks the text: the modification (``query.text``), the reference caption(s)
    (``captions``), the LLM's target description(s) (``targets``), or a text or list of texts
    another stage left in ``data.<key>`` (an ``analyze`` answer's field: object lists, a second
    caption). A list of N texts gives N embeddings; ``combine: mean`` averages them into one
    normalised vector, ``combine: mean_raw`` averages the raw (un-normalised) projector outputs
    and then normalises (the reference code of LDRE on CIRR and of SEIZE everywhere),
    ``combine: none`` keeps the (N, D) matrix for an ensemble stage or a scoring rule (an
    empty list from ``data`` then gives a (0, D) matrix).
    ``template`` wraps each text (``"a photo of {text}"``). ``normalize: false`` keeps the raw
    projector outputs (the reference code of WeiMoCIR fuses those; see docs/scoring.md).

    Example:
        >>> EncodeText(source="targets", output="target", combine="mean")
        >>> EncodeText(source="data.present_objects", output="present", combine="none")
    """

    name = "encode_text"
    Params = EncodeTextParams
    uses_encoder = True
    held = ("encoder",)

    @property
    def inputs(self) -> tuple[Port, ...]:
        source = self.params.source
        kind = "text" if source == "query.text" else "data" if _is_data(source) else "texts"
        return (Port("{source}", kind, "the texts to embed"),)

    @property
    def outputs(self) -> tuple[Port, ...]:
        one = self.params.source == "query.text" or self.params.combine != "none"
        return (Port("embeddings.{output}", "vector" if one else "vectors", "text embedding(s)"),)

    def setup(self, ctx: Context) -> None:
        self.encoder = resolve_encoder(
            ctx, self.instance, self.params.model, self.params.pretrained
        )
        self._key_parts = encoder_cache_parts(self.name, self.encoder)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        texts_per_state = [self._texts(state) for state in states]
        flat = [self.params.template.format(text=t) for texts in texts_per_state for t in texts]
        vectors, cached = cached_embeddings(
            ctx.cache,
            self._key_parts,
            [{"text": text, "normalize": self._normalize_each} for text in flat],
            lambda rows: self.encoder.encode_texts(
                [flat[i] for i in rows],
                batch_size=self.params.batch_size,
                normalize=self._normalize_each,
            ),
        )
        start = 0
        for state, texts in zip(states, texts_per_state, strict=True):
            block = vectors[start : start + len(texts)]
            hits = sum(cached[start : start + len(texts)])
            start += len(texts)
            count_cache(self.record(state), hits, len(texts) - hits)
            put_embedding(state, self.params.output, self._shape(block), self.encoder.identity.key)
        return states

    @property
    def _normalize_each(self) -> bool:
        """Whether each text's embedding is normalised before any combining."""
        return self.params.normalize and self.params.combine != "mean_raw"

    def _texts(self, state: QueryState) -> list[str]:
        source = self.params.source
        if source == "query.text":
            return [state.query.text]
        if _is_data(source):
            return self._data_texts(state, source.partition(".")[2])
        texts = getattr(state, source)
        if not texts:
            raise DataError(f"query {state.query.id!r}: stage {self.instance!r} found no {source}")
        return list(texts)

    def _data_texts(self, state: QueryState, key: str) -> list[str]:
        """A text or list of texts from ``state.data``; an empty list only without combining."""
        value = state.data.get(key)
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataError(
                f"query {state.query.id!r}: stage {self.instance!r} reads data.{key}, which "
                f"holds {type(value).__name__}, not a text or a list of texts"
            )
        if not texts and self.params.combine != "none":
            raise DataError(
                f"query {state.query.id!r}: data.{key} is empty; nothing to average "
                "(use combine: none to keep an empty list)"
            )
        return texts

    def _shape(self, block: torch.Tensor) -> torch.Tensor:
        if self.params.source == "query.text" and self.params.combine != "mean_raw":
            return block[0]
        if self.params.combine != "none":
            mean = block.mean(dim=0)
            return F.normalize(mean, dim=-1) if self.params.normalize else mean
        return block


def _is_data(source: str) -> bool:
    head, _, key = source.partition(".")
    return head == "data" and bool(key)
