"""``evaluate``: a multimodal model judges the top few candidates beside the reference, in turn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cir.generation import Ask, Generator
from cir.llm import load_backend
from cir.prompts import ParseError, load_prompt
from cir.rerank.images import CandidateImages
from cir.rerank.pair import side_by_side
from cir.rerank.yesno import parse_yes_no
from cir.scoring.verification import promote_first
from cir.stages._prompted import GenerationParams, check_variables, stage_generator
from cir.stages._reorder import check_head, head_size, reorder, require_ranking
from cir.stages.base import Context, Port, Stage, register_stage
from cir.types import QueryState

DEFAULT_EVALUATOR = {
    "backend": "vllm",
    "model": "OpenGVLab/InternVL2-8B",
    "trust_remote_code": True,
}


@dataclass(frozen=True)
class EvaluateParams(GenerationParams):
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_EVALUATOR))
    prompt: str = "imagescope"
    top_n: int = 3
    tile_size: int = 448
    max_tokens: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check_head(self.top_n, least=1, tile_size=self.tile_size)


@register_stage
class Evaluate(Stage):
    """Show a multimodal model the reference and each top candidate side by side; yes goes first.

    Candidates are judged in retrieval order, one turn per rank: in turn i every query that has
    no accepted candidate yet sends one request, an image holding the reference (left) and its
    i-th candidate (right) with the modification, and the model answers with a line
    ``Answer: Yes`` or ``Answer: No`` before its explanation. The first accepted candidate of a
    query moves to rank 1 and the query is done (later candidates are not asked); the others keep
    their order. An answer without a readable verdict counts as "no" (a counted fallback), as in
    the reference code. So a query costs between 1 and ``top_n`` requests.

    Writes the new ``ranking`` and ``data.<instance>``: each asked candidate's verdict and
    answer, and the moves.

    Paper: ImageScope (Luo et al., "ImageScope: Unifying Language-Guided Image Retrieval via
    Large Multimodal Model Collective Reasoning", WWW 2025), evaluation of the top 3 with
    InternVL2-8B.

    Example:
        >>> Evaluate(top_n=3, llm={"backend": "vllm", "model": "OpenGVLab/InternVL2-8B",
        ...                        "trust_remote_code": True})
    """

    name = "evaluate"
    Params = EvaluateParams
    inputs = (
        Port("query.text", "text", "the modification"),
        Port("query.image", "image", "the reference image"),
        Port("ranking", "ranking", "the candidates, best first"),
    )
    language_models = ("llm",)
    held = ("backend",)

    @property
    def outputs(self) -> tuple[Port, ...]:
        return (
            Port("ranking", "ranking", "the re-ordered ranking"),
            Port(f"data.{self.instance}", "data", "verdicts, answers, moves"),
        )

    def setup(self, ctx: Context) -> None:
        self.prompt = load_prompt(self.params.prompt, stage="evaluate")
        check_variables(self.prompt, {"modification"}, self.instance)
        self.backend = load_backend(self.params.llm, ctx.resources)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        images = CandidateImages(ctx, self.instance, max_side=None)
        verdicts: dict[int, list[bool | None]] = {}
        answers: dict[int, list[str]] = {}
        for state in states:
            require_ranking(state, self.instance)
            verdicts[id(state)], answers[id(state)] = [], []
        generator = self._generator(ctx)
        for turn in range(self.params.top_n):
            pending = [s for s in states if _open(verdicts[id(s)], turn, s, self.params.top_n)]
            asks = [self._ask(state, turn, images) for state in pending]
            for state, answer in zip(pending, generator.run(asks), strict=True):
                verdicts[id(state)].append(answer.value)
                answers[id(state)].append(answer.texts[0])
        for state in states:
            self._apply(state, verdicts[id(state)], answers[id(state)])
        return states

    def _ask(self, state: QueryState, turn: int, images: CandidateImages) -> Ask:
        tile = self.params.tile_size
        pair = side_by_side(
            images.reference(state), images.candidate(state.ranking.ids[turn]), tile
        )
        modification = state.query.text.strip(" .").lower()
        return Ask({"modification": modification}, (pair,), False, self.record(state), _verdict)

    def _apply(self, state: QueryState, verdicts: list, answers: list) -> None:
        count = head_size(state, self.params.top_n)
        if count == 0:
            return
        padded = verdicts + [None] * (count - len(verdicts))
        ids = state.ranking.ids[: len(verdicts)]
        reorder(
            state,
            self.instance,
            promote_first(padded),
            count,
            verdicts=dict(zip(ids, verdicts, strict=True)),
            answers=dict(zip(ids, answers, strict=True)),
        )
        self.record(state).notes["requests"] = len(verdicts)

    def _generator(self, ctx: Context) -> Generator:
        p = self.params
        return stage_generator(self.name, self.backend, self.prompt, p, p.llm, ctx, kind="rerank")


def _open(verdicts: list, turn: int, state: QueryState, top_n: int) -> bool:
    """Whether the query still asks in this turn: no candidate accepted, one left to ask."""
    return not any(verdicts) and turn < head_size(state, top_n)


def _verdict(text: str) -> bool:
    """The verdict of the first ``Answer: Yes|No`` line, else of the answer's first word."""
    for line in text.splitlines():
        head, _, rest = line.partition(":")
        if head.strip(" *#").lower() == "answer" and parse_yes_no(rest) is not None:
            return parse_yes_no(rest) == 1.0
    verdict = parse_yes_no(text)
    if verdict is None:
        raise ParseError("no 'Answer: Yes' or 'Answer: No' line in the answer")
    return verdict == 1.0
