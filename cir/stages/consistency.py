"""``consistency``: SC4CIR's symmetric consistency re-ranking, appendable to any pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from cir.errors import ConfigError
from cir.generation import Ask, Generator
from cir.llm import load_backend
from cir.models.shared import resolve_encoder
from cir.prompts import Prompt, load_prompt
from cir.rerank.images import CandidateImages
from cir.rerank.order import order_by_scores
from cir.scoring.verification import consistency_scores, reverse_query_similarity
from cir.stages._encoders import cached_embeddings, encoder_cache_parts
from cir.stages._prompted import GenerationParams, check_variables, stage_generator
from cir.stages._reorder import check_head, head_size, reorder, require_ranking
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import query_vector
from cir.types import QueryState

Check = Literal["reverse_query", "reverse_caption"]
CHECKS = ("reverse_query", "reverse_caption")
DEFAULT_MLLM = {
    "backend": "vllm",
    "model": "Qwen/Qwen2.5-VL-7B-Instruct",
    "limit_mm_per_prompt": {"image": 2},
}


@dataclass(frozen=True)
class ConsistencyParams(GenerationParams):
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MLLM))
    checks: tuple[Check, ...] = CHECKS
    reverse_query_prompt: str = "reverse_query"
    reverse_caption_prompt: str = "reverse_caption"
    top_n: int = 50
    alpha: float = 0.8
    weight_original: float = 1.0
    weight_reverse_query: float = 1.0
    weight_reverse_caption: float = 1.0
    image: str = "image"
    model: str | None = None
    pretrained: str | None = None
    max_image_side: int = 448
    max_tokens: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.checks or len(set(self.checks)) != len(self.checks):
            raise ValueError(f"checks must name one or both of {CHECKS} once, got {self.checks}")
        check_head(self.top_n, max_image_side=self.max_image_side)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha}")

    def weights(self) -> tuple[float, ...]:
        """The original score's weight, then one per check run (in ``checks`` order)."""
        named = {
            "reverse_query": self.weight_reverse_query,
            "reverse_caption": self.weight_reverse_caption,
        }
        return (self.weight_original, *(named[c] for c in self.checks))


@register_stage
class Consistency(Stage):
    """Push hard negatives down by checking each top candidate in the reverse direction.

    A true target is consistent both ways: the reference plus the modification gives the target,
    and the target "edited back" gives the reference. For each query's first ``top_n``
    candidates (two checks, each optional, as in the released code):

    - ``reverse_query``: one request shows the reference image and the modification and asks the
      model to rewrite the text so that it describes the reference, i.e. the edit that leads
      back. Each candidate with that text forms a reverse query,
      ``normalize((1 - alpha) c + alpha r)``, scored against the reference image embedding.
    - ``reverse_caption``: one request per candidate shows the reference then the candidate and
      asks for the modification that turns the first into the second; its CLIP text similarity
      to the user's modification is the score.

    A candidate's new score is ``w_original s + w_reverse_query s_1 + w_reverse_caption s_2`` (the
    released code adds them with weight 1), with ``s`` its retrieval score; the head is sorted by
    it, retrieval order breaking ties, and the tail keeps its places. A reverse text that fails
    leaves that check out for the query; a candidate whose description fails gets the mean of
    the others' (both counted as fallbacks). Cost per query: 1 + ``top_n`` requests.

    Reads the reference image embedding ``image`` (put ``encode_image`` before this stage) and
    encodes texts with the pipeline's encoder (or ``model``). Writes the new ``ranking`` and
    ``data.<instance>``: the texts, every candidate's partial scores, and the moves.

    Paper: SC4CIR (Yang et al., "Never Seen Before: Benchmarking Genuine Zero-Shot Composed Image
    Retrieval with Consistent Video-Sourced Datasets", 2026; SC4CIR/ in sotayang/ZeroSight).

    Example:
        >>> Consistency(top_n=20, checks=["reverse_caption"])
    """

    name = "consistency"
    Params = ConsistencyParams
    language_models = ("llm",)
    uses_encoder = True
    held = ("backend", "encoder")

    @property
    def inputs(self) -> tuple[Port, ...]:
        return (
            Port("query.text", "text", "the modification"),
            Port("query.image", "image", "the reference image"),
            Port("ranking", "ranking", "the candidates, best first"),
            Port(f"embeddings.{self.params.image}", "vector", "the reference image embedding"),
        )

    @property
    def outputs(self) -> tuple[Port, ...]:
        return (
            Port("ranking", "ranking", "the re-ordered ranking"),
            Port(f"data.{self.instance}", "data", "reverse texts, partial scores, moves"),
        )

    def setup(self, ctx: Context) -> None:
        p = self.params
        self.prompts = {
            "reverse_query": _prompt(p.reverse_query_prompt, {"modification"}, 1, self.instance),
            "reverse_caption": _prompt(p.reverse_caption_prompt, set(), 2, self.instance),
        }
        self.backend = load_backend(p.llm, ctx.resources)
        self.encoder = resolve_encoder(ctx, self.instance, p.model, p.pretrained)
        self._key_parts = encoder_cache_parts("encode_text", self.encoder)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        index = ctx.require_index(self.instance)
        index.check_encoder(self.encoder.identity.key)
        todo = [s for s in states if self._wanted(s)]
        images = CandidateImages(ctx, self.instance, self.params.max_image_side)
        reverse = self._reverse_texts(todo, ctx, images)
        described = self._descriptions(todo, ctx, images)
        for state in todo:
            self._apply(state, index, reverse.get(id(state)), described.get(id(state)), ctx)
        return states

    def _wanted(self, state: QueryState) -> bool:
        require_ranking(state, self.instance)
        if head_size(state, self.params.top_n) >= 2:
            return True
        self.record(state).notes["skipped"] = "fewer than 2 candidates"
        return False

    # ------------------------------------------------------------------ the two requests
    def _reverse_texts(self, states, ctx, images) -> dict[int, str | None]:
        if "reverse_query" not in self.params.checks:
            return {}
        asks = [
            Ask({"modification": s.query.text}, (images.reference(s),), None, self.record(s))
            for s in states
        ]
        answers = self._generator("reverse_query", ctx).run(asks)
        return {id(s): a.value for s, a in zip(states, answers, strict=True)}

    def _descriptions(self, states, ctx, images) -> dict[int, list[str | None]]:
        if "reverse_caption" not in self.params.checks:
            return {}
        asks = [
            Ask({}, (images.reference(s), images.candidate(i)), None, self.record(s))
            for s in states
            for i in s.ranking.ids[: head_size(s, self.params.top_n)]
        ]
        answers = iter(self._generator("reverse_caption", ctx).run(asks))
        return {
            id(s): [next(answers).value for _ in range(head_size(s, self.params.top_n))]
            for s in states
        }

    def _generator(self, check: str, ctx: Context) -> Generator:
        p = self.params
        prompt = self.prompts[check]
        return stage_generator(self.name, self.backend, prompt, p, p.llm, ctx, kind="rerank")

    # ------------------------------------------------------------------ scores
    def _apply(self, state, index, reverse: str | None, described, ctx: Context) -> None:
        p = self.params
        count = head_size(state, p.top_n)
        ids = state.ranking.ids[:count]
        candidates = index.embeddings[[index.position(i) for i in ids]].float().cpu()
        original = torch.tensor(state.ranking.scores[:count], dtype=torch.float32)
        partial: dict[str, torch.Tensor] = {}
        if "reverse_query" in p.checks:
            partial["reverse_query"] = self._reverse_query(state, candidates, reverse, ctx)
        if "reverse_caption" in p.checks:
            partial["reverse_caption"] = self._reverse_caption(state, described, ctx)
        checks = [partial[c] for c in p.checks]
        total = consistency_scores(original, checks, p.weights())
        reorder(
            state,
            self.instance,
            order_by_scores(total.tolist()),
            count,
            reverse_text=reverse,
            descriptions=dict(zip(ids, described, strict=True)) if described else {},
            scores=_partial_table(ids, {"original": original, **partial, "total": total}),
        )

    def _reverse_query(self, state, candidates, reverse: str | None, ctx) -> torch.Tensor:
        if reverse is None:  # the check is left out for this query (a counted fallback)
            return torch.zeros(candidates.shape[0])
        text = self._embed([reverse], ctx)[0]
        reference = query_vector(state, self.params.image, self.instance).cpu()
        return reverse_query_similarity(candidates, text, reference, self.params.alpha)

    def _reverse_caption(self, state, described: list[str | None], ctx) -> torch.Tensor:
        found = [d for d in described if d is not None]
        if not found:
            return torch.zeros(len(described))
        vectors = self._embed([state.query.text, *found], ctx)
        sims = (vectors[1:] @ vectors[0]).tolist()
        fill = sum(sims) / len(sims)
        it = iter(sims)
        return torch.tensor([next(it) if d is not None else fill for d in described])

    def _embed(self, texts: list[str], ctx: Context) -> torch.Tensor:
        vectors, _ = cached_embeddings(
            ctx.cache,
            self._key_parts,
            [{"text": t, "normalize": True} for t in texts],
            lambda rows: self.encoder.encode_texts([texts[i] for i in rows], normalize=True),
        )
        return vectors.float().cpu()


def _prompt(ref: str, variables: set[str], images: int, stage: str) -> Prompt:
    prompt = load_prompt(ref, stage="consistency")
    check_variables(prompt, variables, stage)
    if prompt.images != images:
        raise ConfigError(
            f"stage {stage!r}: prompt {prompt.ref} takes {prompt.images} image(s); this check "
            f"sends {images}"
        )
    return prompt


def _partial_table(ids, columns: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per candidate id, each named score (for the trace)."""
    return {
        id_: {name: float(col[k]) for name, col in columns.items()} for k, id_ in enumerate(ids)
    }
