"""``reason``: one-stage MLLM reasoning — reference image + modification → target description."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cir.errors import ConfigError
from cir.generation import Ask, Generator
from cir.llm import load_backend
from cir.prompts import load_prompt
from cir.stages._prompted import GenerationParams, check_variables, stage_generator
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import resolve_reference
from cir.types import QueryState

DEFAULT_MLLM = {"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"}


@dataclass(frozen=True)
class ReasonParams(GenerationParams):
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MLLM))
    prompt: str = "osrcir"
    max_tokens: int = 512
    json_mode: bool = False
    target_key: str = "target_description"
    reasoning_key: str = "reasoning"
    reasoning_keys: tuple[str, ...] = ()
    reference_key: str = "reference_description"

    @property
    def reasoning_fields(self) -> tuple[str, ...]:
        """The answer fields kept as reasoning, in order (``reasoning_keys`` when given)."""
        return self.reasoning_keys or (self.reasoning_key,)


@register_stage
class Reason(Stage):
    """Let a multimodal LLM look at the reference image and reason its way to the target.

    One request per query: the reference image and the modification text, rendered with a
    prompt whose answer is a JSON object. The target description (``target_key``) goes to
    ``targets``, the reasoning to ``reasoning`` (one text per field: ``reasoning_key``, or the
    fields of ``reasoning_keys`` in order, e.g. OSrCIR's ``[thoughts, reflections]``) and the
    model's description of the reference (``reference_key``) to ``captions``; the raw answer to
    ``llm_raw``. An
    answer without a usable target follows the prompt's fallback policy; the fallback target is
    the modification text, counted in the trace. ``json_mode`` asks backends that can to
    constrain decoding to JSON.

    Paper: OSrCIR (Tang et al., Reason-before-Retrieve: One-Stage Reflective Chain-of-Thoughts
    for Training-Free Zero-Shot Composed Image Retrieval, CVPR 2025).

    Example:
        >>> Reason(llm={"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"},
        ...        prompt="reason/osrcir.v2", reasoning_keys=["thoughts", "reflections"])
    """

    name = "reason"
    Params = ReasonParams
    inputs = (
        Port("query.image", "image", "the reference image"),
        Port("query.text", "text", "the modification"),
    )
    outputs = (
        Port("targets", "texts", "the target description"),
        Port("reasoning", "texts", "the model's reasoning"),
        Port("captions", "texts", "the model's description of the reference"),
        Port("llm_raw", "texts", "the raw answer"),
    )
    language_models = ("llm",)
    held = ("backend",)

    def setup(self, ctx: Context) -> None:
        self.prompt = load_prompt(self.params.prompt, stage="reason")
        check_variables(self.prompt, {"modification"}, self.instance)
        spec = self.prompt.parser_spec
        if spec.get("kind") != "json" or self.params.target_key not in spec.get("keys", []):
            raise ConfigError(
                f"stage {self.instance!r}: prompt {self.prompt.ref} must declare a `json` parser "
                f"whose keys include {self.params.target_key!r} (the target_key param); "
                f"it declares {spec}"
            )
        self.backend = load_backend(self.params.llm, ctx.resources)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        p = self.params
        asks = [
            Ask(
                {k: state.query.text for k in self.prompt.variables},
                (resolve_reference(state, ctx, self.instance),),
                fallback={p.target_key: state.query.text},
                record=self.record(state),
            )
            for state in states
        ]
        for state, answer in zip(states, self.generator(ctx).run(asks), strict=True):
            value = answer.value
            state.targets = [_text(value.get(p.target_key)) or state.query.text]
            state.reasoning = [_text(value.get(key)) for key in p.reasoning_fields]
            reference = _text(value.get(p.reference_key))
            state.captions = [reference] if reference else []
            state.llm_raw = list(answer.texts)
        return states

    def generator(self, ctx: Context) -> Generator:
        p = self.params
        return stage_generator(
            self.name, self.backend, self.prompt, p, p.llm, ctx, json_mode=p.json_mode
        )


def _text(value: Any) -> str:
    """A JSON field as text: strings stripped, lists of steps joined, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    return str(value)
