"""``analyze``: a language model answers with named JSON fields about the query.

The reasoning steps of ImageScope, CoTMR and MCoT-RE have the same shape: one request per
query, a prompt filled from the modification, the reference caption, the reference image and
earlier answers, and a JSON answer whose fields feed later stages (target descriptions, object
lists, a second caption, yes/no propositions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cir.errors import ConfigError, DataError
from cir.generation import Answer, Ask, Generator
from cir.llm import load_backend
from cir.parsing import extract_json
from cir.prompts import ParseError, Prompt, load_prompt
from cir.stages._prompted import GenerationParams, stage_generator
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import resolve_reference
from cir.types import QueryState

DEFAULT_MLLM = {"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"}


@dataclass(frozen=True)
class AnalyzeParams(GenerationParams):
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MLLM))
    prompt: str = "cotmr"
    max_tokens: int = 1024
    json_mode: bool = False
    targets: tuple[str, ...] = ("target_caption",)
    fields: tuple[str, ...] = ("present_objects", "absent_objects")
    reasoning: str | None = "reasoning"
    fallback_target: Literal["modification", "caption"] = "modification"

    def __post_init__(self) -> None:
        super().__post_init__()
        keys = [*self.targets, *self.fields]
        if not keys:
            raise ValueError("name at least one answer key in `targets` or `fields`")
        if len(set(keys)) != len(keys):
            raise ValueError(f"answer keys are named twice in targets/fields: {keys}")
        bad = [k for k in keys if not k.isidentifier()]
        if bad:
            raise ValueError(f"answer keys must be plain names, got {bad}")


@register_stage
class Analyze(Stage):
    """Ask a language model (text or multimodal) about each query and keep its JSON fields.

    The prompt's variables are filled from the query: ``modification`` (the text), ``caption``
    (the first reference caption), and any other name from ``data.<name>`` (a field an earlier
    ``analyze`` wrote; lists are rendered as numbered lines). A prompt that takes one image gets
    the reference image. The answer must be a JSON object holding every key of ``targets`` and
    ``fields``, each kept as ``data.<key>``. The ``targets`` keys (a text or a list of texts
    each) also become the target descriptions, in order; ``reasoning`` names a key (optional in
    the answer) copied to the reasoning shown in traces. An answer without them follows the
    prompt's fallback policy: each ``targets`` key falls back to the modification (or to the
    reference caption with ``fallback_target: caption``, as ImageScope does) and each
    ``fields`` key to an empty list, counted in the trace. The raw answer is kept in
    ``data.<instance>``.

    Papers: ImageScope (Luo et al., WWW 2025) classifies the instruction and writes three target
    descriptions, then turns the instruction into yes/no propositions; CoTMR (Sun et al., ICCV
    2025) writes a target caption and the objects that must and must not appear; MCoT-RE (Park
    and Lee, 2025) writes a modification-focused and an integrated caption.

    Example:
        >>> Analyze(prompt="mcotre", targets=["modification_caption", "integrated_caption"],
        ...         fields=[])
        >>> Analyze(prompt="imagescope-propositions", targets=[], fields=["questions"])
    """

    name = "analyze"
    Params = AnalyzeParams
    language_models = ("llm",)
    held = ("backend",)

    @property
    def template(self) -> Prompt:
        """The prompt (loaded once; its variables and images decide what the stage reads)."""
        if "_template" not in self.__dict__:
            self._template = load_prompt(self.params.prompt, stage="analyze")
        return self._template

    @property
    def inputs(self) -> tuple[Port, ...]:
        ports = [_variable_port(name) for name in self.template.variables]
        if self.template.images != 0:
            ports.append(Port("query.image", "image", "the reference image"))
        return tuple(ports)

    @property
    def outputs(self) -> tuple[Port, ...]:
        p = self.params
        ports = [Port(f"data.{self.instance}", "data", "the raw answer")]
        if p.targets:
            ports += [Port("targets", "texts", "the target descriptions")]
            ports += [Port("llm_raw", "texts", "the raw answer")]
        if p.reasoning:
            ports.append(Port("reasoning", "texts", "the model's reasoning"))
        keys = (*p.targets, *p.fields)
        return (*ports, *(Port(f"data.{k}", "data", "an answer field") for k in keys))

    def setup(self, ctx: Context) -> None:
        if self.template.images not in (0, 1):
            raise ConfigError(
                f"stage {self.instance!r}: prompt {self.template.ref} takes "
                f"{self.template.images or 'any number of'} images; analyze sends at most the "
                "reference image"
            )
        self.backend = load_backend(self.params.llm, ctx.resources)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        asks = [self._ask(state, ctx) for state in states]
        for state, answer in zip(states, self.generator(ctx).run(asks), strict=True):
            self._write(state, answer)
        return states

    def generator(self, ctx: Context) -> Generator:
        p = self.params
        parser = fields_parser(p.targets, p.fields)
        return stage_generator(
            self.name, self.backend, self.template, p, p.llm, ctx, json_mode=p.json_mode,
            parser=parser,
        )  # fmt: skip

    def _ask(self, state: QueryState, ctx: Context) -> Ask:
        variables = {name: self._variable(state, name) for name in self.template.variables}
        images = (resolve_reference(state, ctx, self.instance),) if self.template.images else ()
        return Ask(variables, images, fallback=None, record=self.record(state))

    def _variable(self, state: QueryState, name: str) -> str:
        if name == "modification":
            return state.query.text
        if name == "caption":
            if not state.captions:
                raise DataError(
                    f"query {state.query.id!r}: prompt {self.template.ref} needs a reference "
                    "caption; put a `caption` stage before this one"
                )
            return state.captions[0]
        return render_value(state.data.get(name))

    def _write(self, state: QueryState, answer: Answer) -> None:
        p, value = self.params, answer.value
        state.data[self.instance] = answer.texts[0]
        for key in p.fields:
            state.data[key] = value[key] if value is not None else []
        if p.reasoning:
            reasoning = value.get(p.reasoning) if value is not None else None
            state.reasoning = [render_value(reasoning)] if reasoning else []
        if not p.targets:
            return
        fallback = self._fallback_target(state)
        for key in p.targets:
            state.data[key] = value[key] if value is not None else fallback
        state.targets = [t for key in p.targets for t in _texts(state.data[key])]
        state.llm_raw = list(answer.texts)

    def _fallback_target(self, state: QueryState) -> str:
        if self.params.fallback_target == "caption" and state.captions:
            return state.captions[0]
        return state.query.text


def fields_parser(targets: tuple[str, ...], fields: tuple[str, ...]):
    """A parser for answers holding every ``targets`` key (non-empty text or texts) and every
    ``fields`` key (any JSON value, an empty list included); it returns the JSON object."""

    def parse(text: str) -> dict[str, Any]:
        value = extract_json(text)
        if not isinstance(value, dict):
            raise ParseError("no JSON object in the answer")
        for key in targets:
            if not _texts(value.get(key)):
                raise ParseError(f"JSON answer lacks a non-empty text (or list of texts) {key!r}")
        missing = [key for key in fields if key not in value]
        if missing:
            raise ParseError(f"JSON answer lacks the key(s) {missing}")
        return value

    return parse


def render_value(value: Any) -> str:
    """A field as prompt text: texts as they are, lists as numbered lines, pairs as ``a: b``.

    Example:
        >>> render_value([["Addition", "add a dog"], "keep the sofa"])
        '(1) Addition: add a dog\\n(2) keep the sofa'
    """
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        lines = [f"({i}) {_item(item)}" for i, item in enumerate(value, start=1)]
        return "\n".join(lines) if lines else "(none)"
    return _item(value)


def _item(item: Any) -> str:
    if isinstance(item, list | tuple):
        return ": ".join(str(part).strip() for part in item)
    if isinstance(item, dict):
        return "; ".join(f"{k}: {v}" for k, v in item.items())
    return str(item).strip()


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    return []


def _variable_port(name: str) -> Port:
    if name == "modification":
        return Port("query.text", "text", "the modification")
    if name == "caption":
        return Port("captions", "texts", "the reference caption")
    return Port(f"data.{name}", "data", "an earlier answer field")
