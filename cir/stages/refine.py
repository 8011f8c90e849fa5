"""``refine``: when a verified branch is unsure, a refiner suggests how its next round should go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cir.errors import DataError
from cir.generation import Ask
from cir.llm import load_backend
from cir.prompts import load_prompt
from cir.rerank.confidence import (
    best_candidate,
    needs_refinement,
    read_suggestion,
    refined_instruction,
)
from cir.stages._prompted import GenerationParams, check_variables, stage_generator
from cir.stages.base import Context, Port, Stage, register_stage
from cir.types import QueryState

DEFAULT_REFINER = {"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"}
VARIABLES = {"caption", "modification", "candidate"}


@dataclass(frozen=True)
class RefineParams(GenerationParams):
    verified: str = "verify"
    tau: float = 0.7
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_REFINER))
    prompt: str = "text"
    captions: str = "captions"
    max_tokens: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be within [0, 1] (a confidence), got {self.tau}")


@register_stage
class Refine(Stage):
    """Decide per query whether a verified branch needs another round, and write its instruction.

    ``verified`` names a ``rerank`` stage in ``verify`` mode. Its most confident candidate (the
    better-ranked one on ties) decides: when that confidence does not exceed ``tau``, a refiner
    (a text LLM) reads the reference caption, the modification and the gallery caption of that
    candidate (from the index sidecar ``captions``, made by ``cir index caption``) and suggests
    what the branch's next query must add or correct. The next round's instruction,
    ``"<modification> and <suggestion>."``, goes to ``data.<instance>``; where the branch is
    confident, or the refiner finds nothing to change, it is the modification unchanged, so the
    next round repeats that query exactly (and its answers come from the content cache). Stages
    of the next round read it with ``modification: data.<instance>``. The decision, the best
    candidate, its confidence and the suggestion are in the trace.

    Prompts: ``text`` (the branch searched with a rewritten description) and ``image`` (it
    searched with an edited picture), or a file of your own with variables ``caption``,
    ``modification`` and ``candidate``.

    Paper: WISER (Wang et al., WISER: Wider Search, Deeper Thinking, and Adaptive Fusion for
    Training-Free Zero-Shot Composed Image Retrieval, CVPR 2026, arXiv 2602.23029): tau = 0.7,
    one round.

    Example:
        >>> Refine("refine_text", verified="verify_text", tau=0.7, prompt="text",
        ...        llm={"backend": "openai", "model": "gpt-4o", "api_key_env": "OPENAI_API_KEY"})
    """

    name = "refine"
    Params = RefineParams
    language_models = ("llm",)
    held = ("backend",)

    @property
    def inputs(self) -> tuple[Port, ...]:
        return (
            Port(f"data.{self.params.verified}", "data", "the verifier's confidences"),
            Port("captions", "texts", "the reference caption"),
            Port("query.text", "text", "the modification"),
        )

    @property
    def outputs(self) -> tuple[Port, ...]:
        return (Port(f"data.{self.instance}", "text", "the next round's instruction"),)

    def setup(self, ctx: Context) -> None:
        self.prompt = load_prompt(self.params.prompt, stage="refine")
        check_variables(self.prompt, VARIABLES, self.instance)
        self.backend = load_backend(self.params.llm, ctx.resources)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        pending = []
        for state in states:
            state.data[self.instance] = state.query.text
            best = self._decide(state)
            if best is not None:
                pending.append((state, self._ask(state, best, ctx)))
        p = self.params
        generator = stage_generator(self.name, self.backend, self.prompt, p, p.llm, ctx, "refine")
        answers = generator.run([ask for _, ask in pending])
        for (state, _), answer in zip(pending, answers, strict=True):
            notes = self.record(state).notes["refine"]
            notes.update(answer=answer.texts[0], suggestion=answer.value)
            if answer.value:
                state.data[self.instance] = refined_instruction(state.query.text, answer.value)
        return states

    def _decide(self, state: QueryState) -> str | None:
        """The candidate to ask the refiner about, or None when the branch is confident."""
        # no data at all: the verifier skipped the query (fewer than two candidates)
        data = state.data.get(self.params.verified, {"p_yes": {}})
        if not isinstance(data, dict) or not isinstance(data.get("p_yes"), dict):
            raise DataError(
                f"stage {self.instance!r}: query {state.query.id!r} has no confidences from "
                f"{self.params.verified!r}; name a rerank stage with mode: verify"
            )
        best, confidence = best_candidate(data["p_yes"], data.get("order") or list(data["p_yes"]))
        triggered = best is not None and needs_refinement(confidence, self.params.tau)
        self.record(state).notes["refine"] = {
            "best": best,
            "confidence": round(confidence, 6),
            "tau": self.params.tau,
            "triggered": triggered,
        }
        return best if triggered else None

    def _ask(self, state: QueryState, best: str, ctx: Context) -> Ask:
        values = {
            "caption": state.captions[0] if state.captions else "",
            "modification": state.query.text,
            "candidate": self._gallery_caption(ctx, best),
        }
        variables = {k: values[k] for k in self.prompt.variables}
        return Ask(variables, record=self.record(state), parser=read_suggestion)

    def _gallery_caption(self, ctx: Context, gid: str) -> str:
        index = ctx.require_index(self.instance)
        name = self.params.captions
        rows = index.sidecar(name)[1].get("captions") if name in index.sidecars else None
        if not isinstance(rows, list):
            raise DataError(
                f"stage {self.instance!r} describes candidates by their gallery captions, but the "
                f"index has no caption sidecar {name!r}; make one with "
                "`cir index caption INDEX --captioner ...`"
            )
        captions = rows[index.position(gid)]
        return captions[0] if captions else ""
