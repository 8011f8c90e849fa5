"""``recompose``: caption(s) + modification → target description(s) with an LLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cir.generation import Ask, Generator
from cir.llm import load_backend
from cir.prompts import load_prompt
from cir.stages._prompted import GenerationParams, check_variables, stage_generator
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import check_source, resolve_text
from cir.types import QueryState

DEFAULT_LLM = {"backend": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"}


@dataclass(frozen=True)
class RecomposeParams(GenerationParams):
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_LLM))
    prompt: str = "general"
    modification: str = "query.text"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self.modification, "query.text")


@register_stage
class Recompose(Stage):
    """Rewrite each reference caption into a description of the target image with an LLM.

    For each query and each of its N captions, one request renders the prompt with the caption
    and the modification text; all requests of a batch go to the backend together (N captions →
    N target descriptions, as LDRE does). The answer is parsed by the prompt's parser (a line
    labelled ``Target Description:`` for the shipped prompts); an answer that does not parse
    follows the prompt's fallback policy (or the stage's ``fallback``/``retries``), and a fallback
    target is the modification text itself, counted in the trace. Raw answers go to ``llm_raw``.

    Shipped prompts: ``general``, ``fashion`` (FashionIQ feedback), ``short`` (GeneCIS-style
    one-word conditions); or the path of your own prompt file with variables
    ``caption`` and ``modification``. ``modification: data.<name>`` reads the change from a
    text an earlier stage wrote (the instruction of a refinement round, ``refine``).

    Papers: CIReVL (Karthik et al., ICLR 2024), LDRE (Yang et al., SIGIR 2024).

    Example:
        >>> Recompose(llm={"backend": "openai", "model": "gpt-4o-mini"}, prompt="fashion")
    """

    name = "recompose"
    Params = RecomposeParams
    inputs = (
        Port("captions", "texts", "reference caption(s)"),
        Port("{modification}", "text", "the modification"),
    )
    outputs = (
        Port("targets", "texts", "one target description per caption"),
        Port("llm_raw", "texts", "the raw answers"),
    )
    language_models = ("llm",)
    held = ("backend",)

    def setup(self, ctx: Context) -> None:
        self.prompt = load_prompt(self.params.prompt, stage="recompose")
        check_variables(self.prompt, {"caption", "modification"}, self.instance)
        self.backend = load_backend(self.params.llm, ctx.resources)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        asks, owners = [], []
        for state in states:
            record = self.record(state)
            change = resolve_text(state, self.params.modification, self.instance)
            for caption in state.captions:
                values = {"caption": caption, "modification": change}
                variables = {k: values[k] for k in self.prompt.variables}
                asks.append(Ask(variables, fallback=change, record=record))
                owners.append(state)
        for state in states:
            state.targets, state.llm_raw = [], []
        for state, answer in zip(owners, self.generator(ctx).run(asks), strict=True):
            state.targets.append(answer.value)
            state.llm_raw.append(answer.texts[0])
        return states

    def generator(self, ctx: Context) -> Generator:
        p = self.params
        return stage_generator(self.name, self.backend, self.prompt, p, p.llm, ctx)
