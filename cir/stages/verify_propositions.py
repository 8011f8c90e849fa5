"""``verify_propositions``: re-rank the top candidates by how many yes/no propositions they meet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cir.generation import Ask
from cir.llm import load_backend
from cir.prompts import ParseError, load_prompt
from cir.rerank.images import CandidateImages
from cir.rerank.order import order_by_scores
from cir.rerank.yesno import parse_yes_no
from cir.scoring.verification import proposition_matches
from cir.stages._prompted import GenerationParams, check_variables, stage_generator
from cir.stages._reorder import check_head, head_size, reorder, require_ranking
from cir.stages.base import Context, Port, Stage, register_stage
from cir.types import QueryState

DEFAULT_VQA = {
    "backend": "vllm",
    "model": "google/paligemma-3b-mix-224",
    "use_chat_template": False,
}
ANSWER_WORDS = {"yes": True, "true": True, "no": False, "false": False}


@dataclass(frozen=True)
class VerifyPropositionsParams(GenerationParams):
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_VQA))
    prompt: str = "imagescope"
    propositions: str = "questions"
    top_n: int = 20
    max_tokens: int = 8
    max_image_side: int = 448

    def __post_init__(self) -> None:
        super().__post_init__()
        check_head(self.top_n, max_image_side=self.max_image_side)


@register_stage
class VerifyPropositions(Stage):
    """Ask a visual question-answering model each proposition about each top candidate.

    ``data.<propositions>`` holds ``[question, expected]`` pairs (expected ``yes``/``no``), as
    the ``analyze`` stage writes them with the ``imagescope-propositions`` prompt; malformed
    pairs are dropped and counted. For each of the first ``top_n`` candidates and each question,
    one request shows the candidate image alone with the question. A candidate's score is the
    number of answers equal to the expected ones; the head is re-sorted by it, retrieval order
    breaking ties (a stable sort), and the tail keeps its places. As in the reference code, an
    answer that says neither yes nor no counts as "no" (a counted fallback). A query without
    propositions keeps its order (noted in the trace).

    Writes the new ``ranking`` and ``data.<instance>``: the propositions, each candidate's
    answers and number of matches, and the moves.

    Paper: ImageScope (Luo et al., "ImageScope: Unifying Language-Guided Image Retrieval via
    Large Multimodal Model Collective Reasoning", WWW 2025), verification with PaliGemma on the
    top 20.

    Example:
        >>> VerifyPropositions(top_n=20, llm={"backend": "vllm",
        ...     "model": "google/paligemma-3b-mix-224", "use_chat_template": False})
    """

    name = "verify_propositions"
    Params = VerifyPropositionsParams
    language_models = ("llm",)
    held = ("backend",)

    @property
    def inputs(self) -> tuple[Port, ...]:
        return (
            Port("ranking", "ranking", "the candidates, best first"),
            Port(f"data.{self.params.propositions}", "data", "[question, yes/no] pairs"),
        )

    @property
    def outputs(self) -> tuple[Port, ...]:
        return (
            Port("ranking", "ranking", "the re-ordered ranking"),
            Port(f"data.{self.instance}", "data", "answers, matches, moves"),
        )

    def setup(self, ctx: Context) -> None:
        self.prompt = load_prompt(self.params.prompt, stage="verify_propositions")
        check_variables(self.prompt, {"question"}, self.instance)
        self.backend = load_backend(self.params.llm, ctx.resources)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        images = CandidateImages(ctx, self.instance, self.params.max_image_side)
        jobs = []
        for state in states:
            require_ranking(state, self.instance)
            propositions, dropped = read_propositions(state.data.get(self.params.propositions))
            notes = self.record(state).notes
            if dropped:
                notes["dropped_propositions"] = dropped
            if not propositions or head_size(state, self.params.top_n) < 2:
                notes["skipped"] = "no propositions" if not propositions else "one candidate"
                continue
            jobs.append((state, propositions))
        asks = [ask for state, props in jobs for ask in self._asks(state, props, images)]
        answers = iter(self._generator(ctx).run(asks))
        for state, props in jobs:
            count = head_size(state, self.params.top_n)
            verdicts = [[next(answers).value for _ in props] for _ in range(count)]
            self._apply(state, props, verdicts, count)
        return states

    def _asks(self, state: QueryState, props: list, images: CandidateImages) -> list[Ask]:
        record = self.record(state)
        return [
            Ask({"question": question}, (images.candidate(id_),), False, record, _yes_or_no)
            for id_ in state.ranking.ids[: head_size(state, self.params.top_n)]
            for question, _ in props
        ]

    def _apply(self, state: QueryState, props: list, verdicts: list, count: int) -> None:
        expected = [answer for _, answer in props]
        matches = [proposition_matches(v, expected) for v in verdicts]
        ids = state.ranking.ids[:count]
        reorder(
            state,
            self.instance,
            order_by_scores(matches),
            count,
            propositions=[{"question": q, "expected": e} for q, e in props],
            matches=dict(zip(ids, matches, strict=True)),
            answers=dict(zip(ids, verdicts, strict=True)),
        )

    def _generator(self, ctx: Context):
        p = self.params
        return stage_generator(self.name, self.backend, self.prompt, p, p.llm, ctx, kind="rerank")


def read_propositions(value: Any) -> tuple[list[tuple[str, bool]], int]:
    """``(question, expected)`` pairs from an answer field, and how many entries were unusable.

    Entries are ``[question, answer]`` pairs or ``{"question": ..., "answer": ...}`` objects;
    the answer is yes/no or true/false (any case) or a boolean.

    Example:
        >>> read_propositions([["Is it red?", "yes"], ["Is there a dog?", "False"], ["?"]])
        ([('Is it red?', True), ('Is there a dog?', False)], 1)
    """
    if not isinstance(value, list):
        return [], 0 if value in (None, [], "") else 1
    found = []
    for item in value:
        pair = _pair(item)
        if pair is not None:
            found.append(pair)
    return found, len(value) - len(found)


def _pair(item: Any) -> tuple[str, bool] | None:
    if isinstance(item, dict):
        item = [item.get("question"), item.get("answer", item.get("expected"))]
    if not isinstance(item, list | tuple) or len(item) != 2:
        return None
    question, answer = item
    if not isinstance(question, str) or not question.strip():
        return None
    if isinstance(answer, bool):
        return question.strip(), answer
    if isinstance(answer, str):
        word = answer.strip().strip(".!").split(" ")[0].lower() if answer.strip() else ""
        if word in ANSWER_WORDS:
            return question.strip(), ANSWER_WORDS[word]
    return None


def _yes_or_no(text: str) -> bool:
    verdict = parse_yes_no(text)
    if verdict is None:
        raise ParseError("the answer says neither yes nor no")
    return verdict == 1.0
