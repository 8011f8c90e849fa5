"""Core value types: the query a user asks, the blackboard stages write on, and rankings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import torch

ImageLike = str | Path | Image.Image

_auto_ids = itertools.count()


@dataclass
class Query:
    """One composed-retrieval request: a reference image and how the target should differ.

    Args:
        text: the modification text ("the same dress in red, without sleeves").
        reference: the reference image as a file path or a PIL image.
        reference_id: the reference as an id of the gallery index. When ``reference`` is
            not given the image (or its stored embedding) is taken from the index; the id is
            also what ``retrieve(exclude_reference=True)`` removes from the ranking.
        id: a name for the query; generated when omitted.
        extras: free-form data for stages and benchmarks (group members, shared concept, ...).

    Example:
        >>> Query("make it red", reference="photos/dress.jpg")
        >>> Query("add a dog", reference_id="img_0042", id="q7")
    """

    text: str
    reference: ImageLike | None = None
    reference_id: str | None = None
    id: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Query.text must be a string, got {type(self.text).__name__}")
        if self.reference is not None and not isinstance(self.reference, str | Path | Image.Image):
            raise TypeError(
                "Query.reference must be a file path or a PIL image, "
                f"got {type(self.reference).__name__}"
            )
        if not self.id:
            self.id = f"q{next(_auto_ids)}"

    @property
    def has_image(self) -> bool:
        """True when the query carries a reference image (directly or by gallery id)."""
        return self.reference is not None or self.reference_id is not None


@dataclass(frozen=True)
class Ranking:
    """Gallery ids best first, with their scores (same length)."""

    ids: tuple[str, ...]
    scores: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.scores):
            raise ValueError(f"Ranking has {len(self.ids)} ids but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.ids)

    def top(self, k: int) -> Ranking:
        """The first ``k`` entries."""
        return Ranking(self.ids[:k], self.scores[:k])

    def to_dict(self) -> dict[str, list]:
        return {"ids": list(self.ids), "scores": [float(s) for s in self.scores]}


@dataclass
class StageRecord:
    """What one stage did for one query: time, cache use, parser fallbacks, notes for reports."""

    stage: str
    name: str
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    fallbacks: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "name": self.name,
            "seconds": round(self.seconds, 6),
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "fallbacks": self.fallbacks,
            "notes": self.notes,
        }


@dataclass
class QueryState:
    """The blackboard a pipeline's stages read from and write to, one per query.

    Fields are addressed by name in a stage's ``reads``/``writes``:
    ``query.text``, ``query.image``, ``captions``, ``targets``, ``llm_raw``,
    ``embeddings.<name>``, ``ranking``, ``reasoning``, ``scores.<name>``.

    Attributes:
        query: the request.
        captions: reference caption(s) (one, or N sampled for ensembles).
        targets: target description(s) written by an LLM.
        llm_raw: raw LLM outputs behind ``targets`` (kept for the trace).
        embeddings: named embeddings; a 1-D tensor for one vector, 2-D (N, D) for N.
        encoders: for each embedding name, the identity key of the encoder that made it.
        ranking: the current ranking of gallery ids.
        reasoning: free text a model wrote about its decision (re-rankers, one-stage MLLMs).
        data: stage-specific values (fusion weights used, grid images, ...).
        trace: one record per stage that ran.
    """

    query: Query
    captions: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    llm_raw: list[str] = field(default_factory=list)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)
    ranking: Ranking | None = None
    reasoning: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    trace: list[StageRecord] = field(default_factory=list)

    def has(self, name: str) -> bool:
        """Whether the field ``name`` (see class doc) holds a value."""
        head, _, rest = name.partition(".")
        if head == "query":
            return rest == "text" or (rest == "image" and self.query.has_image)
        if head == "embeddings":
            return rest in self.embeddings
        if head in ("scores", "data"):
            return rest in self.data
        value = getattr(self, head, None)
        return value is not None and value != []

    def record(self, stage: str) -> StageRecord:
        """The trace record of the stage instance named ``stage``, created on first use."""
        for rec in self.trace:
            if rec.name == stage:
                return rec
        raise KeyError(f"no trace record for stage {stage!r}")

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view for CLIs, reports and the demo."""
        return {
            "id": self.query.id,
            "text": self.query.text,
            "reference_id": self.query.reference_id,
            "captions": self.captions,
            "targets": self.targets,
            "reasoning": self.reasoning,
            "ranking": self.ranking.to_dict() if self.ranking else None,
            "trace": [r.to_dict() for r in self.trace],
        }
