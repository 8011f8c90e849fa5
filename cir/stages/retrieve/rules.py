"""Gallery scoring rules selectable by name in the ``retrieve`` stage.

A rule turns a batch of query states into a ``score_fn(start, stop, gallery_chunk)`` for a
chunked top-k driver. Rules read stacked query embeddings and gallery sidecars through
``RuleInputs`` and never touch an index directly. Each has a frozen ``Params`` dataclass,
set in a pipeline as ``retrieve`` ``rule_params``.

Example:
    >>> rule = make_rule("seize", {"lambda_neg": 2.1})
    >>> score_fn = rule.build(inputs)   # then index.topk(score_fn, len(states), k=50)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cir.errors import ConfigError, DataError
from cir.index.search import ProductScores
from cir.params import build_params
from cir.scoring.basic import basic_scores
from cir.scoring.chunked import ScoreFn
from cir.scoring.fusion import weimocir_query
from cir.scoring.gallery import seize_scores, set_positions, weimocir_scores


@dataclass
class RuleInputs:
    """What a rule may read: per-query values, gallery sidecars, reference rows.

    Attributes:
        states: the batch of ``QueryState``.
        query: name of the main query embedding (``retrieve``'s ``query`` parameter).
        sidecar: name -> full (N, ...) sidecar tensor and its meta.
        reference_row: gallery row of a query's ``reference_id`` (None when not in the gallery).
        fallback: ``fallback(i, reason)`` records that query i used a declared fallback.
        device: where query tensors go (the gallery's device).
        gallery: the embeddings of the rows being scored (N, D): the whole gallery, or the
            candidate rows on an approximate backend (positions as ``reference_row``'s).
        whole_gallery: every gallery embedding, for gallery-wide statistics (None: ``gallery``).
    """

    states: list[Any]
    query: str
    sidecar: Callable[[str], tuple[torch.Tensor, dict[str, Any]]]
    reference_row: Callable[[int], int | None]
    fallback: Callable[[int, str], None] = lambda i, reason: None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    gallery: torch.Tensor | None = None
    whole_gallery: torch.Tensor | None = None

    @property
    def statistics_rows(self) -> torch.Tensor | None:
        """The rows gallery-wide statistics are taken over (the whole gallery)."""
        return self.whole_gallery if self.whole_gallery is not None else self.gallery

    def stacked(self, name: str) -> torch.Tensor:
        """Embedding ``name`` of every query as one float32 (Q, D) tensor on ``device``."""
        from cir.state import stack_vectors

        return stack_vectors(self.states, name, "retrieve", self.device)


class GalleryRule:
    """Base class: ``name``, ``Params``, the fields a rule reads, and ``build``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type]

    def __init__(self, params: Any) -> None:
        self.params = params

    def reads(self, query: str) -> tuple[str, ...]:
        return (f"embeddings.{query}",)

    def holds_many(self, field: str) -> bool:
        """Whether ``field`` holds several vectors per query (an (N, D) matrix)."""
        return False

    def build(self, inputs: RuleInputs) -> ScoreFn:
        raise NotImplementedError


_RULES: dict[str, type[GalleryRule]] = {}


def register_rule(cls: type[GalleryRule]) -> type[GalleryRule]:
    """Class decorator: make a rule selectable as ``retrieve`` ``rule: <name>``."""
    _RULES[cls.name] = cls
    return cls


def rule_names() -> list[str]:
    _load_more_rules()
    return sorted(_RULES)


def make_rule(
    name: str, params: dict[str, Any] | None = None, where: str = "retrieve"
) -> GalleryRule:
    """The rule ``name`` with validated ``params`` (ConfigError names the valid ones)."""
    _load_more_rules()
    if name not in _RULES:
        raise ConfigError(
            f"{where}: unknown scoring rule {name!r}; valid rules: {', '.join(rule_names())}"
        )
    cls = _RULES[name]
    return cls(build_params(cls.Params, dict(params or {}), where=f"{where} rule {name!r}"))


def _load_more_rules() -> None:
    """Register the rules kept in their own modules (imported on first use)."""
    import cir.stages.retrieve.reasoning_rules  # noqa: F401


@dataclass(frozen=True)
class NoRuleParams:
    """The plain rule has no parameters."""


@register_rule
class DotRule(GalleryRule):
    """Cosine similarity of the query embedding to each gallery image (every baseline)."""

    name = "dot"
    Params = NoRuleParams

    def build(self, inputs: RuleInputs) -> ScoreFn:
        return ProductScores(inputs.stacked(inputs.query))  # any compute path of the index


@dataclass(frozen=True)
class WeimocirParams:
    beta: float = 0.1
    captions: str = "captions"
    caption_query: Literal["reference", "paper"] = "reference"
    alpha: float = 0.8
    text: str = "text"
    reference_captions: str = "reference_captions"

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be within [0, 1], got {self.beta}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha}")


@register_rule
class WeimocirRule(GalleryRule):
    """WeiMoCIR: ``(1 - beta) q.G + beta mean_k(q_k . C_k)`` with the gallery's K captions.

    ``caption_query: reference`` (default, as the reference code) builds
    ``q_k = normalize((1 - alpha) c_k + alpha t)`` from the reference image's own k-th caption
    embedding ``c_k`` (the embedding ``reference_captions`` of the query when present, else the
    caption sidecar row of its ``reference_id``); a query with neither uses ``q_k = q`` and is
    counted as a fallback. ``caption_query: paper`` always uses ``q_k = q``.
    """

    name = "weimocir"
    Params = WeimocirParams

    def reads(self, query: str) -> tuple[str, ...]:
        extra = (f"embeddings.{self.params.text}",) if self._reference_form else ()
        return (f"embeddings.{query}", *extra)

    @property
    def _reference_form(self) -> bool:
        return self.params.caption_query == "reference" and self.params.beta > 0

    def build(self, inputs: RuleInputs) -> ScoreFn:
        p = self.params
        q = inputs.stacked(inputs.query)
        if p.beta == 0:
            return lambda start, stop, chunk: weimocir_scores(q, chunk, None, None, 0.0)
        try:
            captions, _ = inputs.sidecar(p.captions)
        except DataError as exc:
            raise DataError(
                f"{exc}; the caption-aware score needs the gallery captions: make them with "
                f"`cir index caption INDEX_DIR --captioner ... --name {p.captions}` "
                "(docs/scoring.md)"
            ) from None
        if captions.dim() != 3:
            raise DataError(
                f"sidecar {p.captions!r} must hold (N, K, D) caption embeddings, got shape "
                f"{tuple(captions.shape)}; build it with `cir index caption`"
            )
        qk = self._caption_queries(inputs, q, captions) if self._reference_form else None
        return lambda start, stop, chunk: weimocir_scores(
            q, chunk, captions[start:stop].float(), qk, p.beta
        )

    def _caption_queries(self, inputs: RuleInputs, q: torch.Tensor, captions: torch.Tensor):
        p, k = self.params, captions.shape[1]
        text = inputs.stacked(p.text)
        per_query = []
        for i, state in enumerate(inputs.states):
            own = state.embeddings.get(p.reference_captions)
            row = inputs.reference_row(i) if own is None else None
            if own is not None and tuple(own.shape) != tuple(captions.shape[1:]):
                raise DataError(
                    f"query {state.query.id!r}: embedding {p.reference_captions!r} has shape "
                    f"{tuple(own.shape)}; the gallery has {tuple(captions.shape[1:])} per image"
                )
            if own is not None:
                c = own.float().to(q.device)
            elif row is not None:
                c = captions[row].float().to(q.device)
            else:
                inputs.fallback(i, "no reference captions: q_k = q")
                per_query.append(q[i].expand(k, -1))
                continue
            per_query.append(weimocir_query(c, text[i].expand(k, -1), p.alpha))
        return torch.stack(per_query)


@dataclass(frozen=True)
class SeizeParams:
    caption: str = "caption"
    lambda_neg: float = 2.1
    lambda_pos: float = 0.13
    reference_score: float | None = None


@register_rule
class SeizeRule(GalleryRule):
    """SEIZE: the edit similarity plus weighted semantic increments over the caption's.

    The query embedding is the edit ``t``; ``caption`` names ``c``. ``reference_score`` (e.g.
    -1) overwrites the reference image's own score instead of dropping it.
    """

    name = "seize"
    Params = SeizeParams

    def reads(self, query: str) -> tuple[str, ...]:
        return (f"embeddings.{query}", f"embeddings.{self.params.caption}")

    def build(self, inputs: RuleInputs) -> ScoreFn:
        p = self.params
        t, c = inputs.stacked(inputs.query), inputs.stacked(p.caption)
        rows = [inputs.reference_row(i) for i in range(len(inputs.states))]
        positions = torch.tensor([-1 if r is None else r for r in rows], device=t.device)

        def score(start: int, stop: int, chunk: torch.Tensor) -> torch.Tensor:
            s = seize_scores(t, c, chunk, p.lambda_neg, p.lambda_pos)
            if p.reference_score is not None:
                s = set_positions(s, positions, start, p.reference_score)
            return s

        return score


@dataclass(frozen=True)
class BasicParams:
    text: str = "basic_text"
    harris_lambda: float = 0.1


@register_rule
class BasicRule(GalleryRule):
    """BASIC's Harris fusion of the ``basic`` stage's image and text queries."""

    name = "basic"
    Params = BasicParams

    def reads(self, query: str) -> tuple[str, ...]:
        return (f"embeddings.{query}", f"embeddings.{self.params.text}", "data.basic")

    def build(self, inputs: RuleInputs) -> ScoreFn:
        v, t = inputs.stacked(inputs.query), inputs.stacked(self.params.text)
        calib = inputs.states[0].data["basic"]
        mean = calib["image_mean"].float().to(v.device)
        lo_img, lo_txt = calib.get("image_min"), calib.get("text_min")
        lam = self.params.harris_lambda
        return lambda start, stop, chunk: basic_scores(v, t, chunk, mean, lo_img, lo_txt, lam)


@dataclass(frozen=True)
class TwinParams:
    twins: str = "twins"


@register_rule
class TwinRule(GalleryRule):
    """Paracosm: each gallery image scored as ``normalize(V(I) + V(twin))`` with its synthetic
    twin's embedding from the index sidecar ``twins`` (made by ``cir index imagine``)."""

    name = "twins"
    Params = TwinParams

    def build(self, inputs: RuleInputs) -> ScoreFn:
        from cir.scoring.gallery import twin_scores

        q = inputs.stacked(inputs.query)
        twins, _ = inputs.sidecar(self.params.twins)
        if twins.dim() != 2 or twins.shape[1] != q.shape[1]:
            raise DataError(
                f"sidecar {self.params.twins!r} must hold one {q.shape[1]}-d twin embedding per "
                f"gallery image, got shape {tuple(twins.shape)}; make it with `cir index imagine`"
            )
        return lambda start, stop, chunk: twin_scores(q, chunk, twins[start:stop])


@dataclass(frozen=True)
class ReferenceMixParams:
    weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be within [0, 1], got {self.weight}")


@register_rule
class ReferenceMixRule(GalleryRule):
    """Cosine similarity to ``normalize((1 - weight) q + weight r)``: the normalised query ``q``
    moved towards the reference image's stored gallery embedding ``r``.

    With ``weight`` 0.5 this is CIReVL's query on GeneCIS's focus-attribute task (Karthik et al.,
    "Vision-by-Language for Training-Free Compositional Image Retrieval", ICLR 2024: the
    recomposed text's embedding averaged with the reference image's). A query whose reference
    is not a gallery image keeps ``q`` and is counted as a fallback.
    """

    name = "reference_mix"
    Params = ReferenceMixParams

    def build(self, inputs: RuleInputs) -> ScoreFn:
        q = F.normalize(inputs.stacked(inputs.query), dim=-1)
        anchors = []
        for i in range(len(inputs.states)):
            row = inputs.reference_row(i)
            if row is None or inputs.gallery is None:
                inputs.fallback(i, "the reference is not a gallery image: the query alone")
                anchors.append(q[i])
            else:
                anchors.append(F.normalize(inputs.gallery[row].float().to(q.device), dim=-1))
        w = self.params.weight
        mixed = F.normalize((1.0 - w) * q + w * torch.stack(anchors), dim=-1)
        return ProductScores(mixed)
