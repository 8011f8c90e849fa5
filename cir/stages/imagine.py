"""``imagine``: draw the target — edit the reference from the modification, or draw a text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cir.diffusion import Drawn, Picture, Rendering, draw, load_generator
from cir.errors import DataError
from cir.prompts import Prompt, load_prompt
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import check_source, count_cache, resolve_reference, resolve_text
from cir.types import ImageLike, QueryState, StageRecord

DEFAULT_GENERATOR = {"model": "Qwen/Qwen-Image-Edit", "dtype": "bfloat16"}
DEFAULT_PROMPTS = {"edit": "edit", "text": "target"}
_FIELDS = {"modification": None, "caption": "captions", "target": "targets"}
"""Prompt variables read from the state; any other variable comes from ``Query.extras``."""


@dataclass(frozen=True)
class ImagineParams(Rendering):
    generator: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_GENERATOR))
    task: Literal["edit", "text"] = "edit"
    prompt: str | None = None
    modification: str = "query.text"
    output: str = "imagined"
    batch_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self.modification, "query.text")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@register_stage
class Imagine(Stage):
    """Draw a picture of the target with a diffusers pipeline and put it in ``data.<output>``.

    ``task: edit`` edits the reference image with an instruction-following editor
    (Qwen-Image-Edit, FLUX.1 Kontext, InstructPix2Pix); ``task: text`` draws from a text
    (Qwen-Image, FLUX.1, Stable Diffusion). ``prompt`` renders what the generator is told: the
    shipped ``edit`` (the modification as it is), ``paracosm`` (apply the change, keep the rest),
    ``target`` (an earlier stage's target description) or a prompt file of your own. Prompt
    variables ``modification``, ``caption`` and ``target`` come from the state (the first caption
    or target); any other variable comes from ``Query.extras`` (CIRCO's ``shared_concept``).
    ``modification: data.<name>`` reads the change from a refinement round's instruction.

    The generator is named like every model (``{model: hub id or folder, dtype, device,
    offload}``); ``steps``, ``guidance``, ``true_cfg``, ``image_guidance``, ``negative_prompt``,
    ``width``, ``height`` and ``seed`` say how it draws. Every picture is seeded, so runs repeat,
    and cached by content as PNG (pipeline, prompt, input image, settings); misses are drawn
    ``batch_size`` at a time. The trace records the prompt, seed, size and cache key of each
    picture; the demo shows the picture.

    Papers: Paracosm (Wang, Zhao and Kong, Generating a Paracosm for Training-Free Zero-Shot
    Composed Image Retrieval, arXiv 2602.00813) edits the reference into a "mental image"; WISER
    (Wang et al., CVPR 2026, arXiv 2602.23029) edits it for its image-to-image branch.

    Example:
        >>> Imagine(generator={"model": "Qwen/Qwen-Image-Edit", "dtype": "bfloat16"},
        ...         prompt="paracosm", true_cfg=4.0, negative_prompt=" ", width=512, height=512)
    """

    name = "imagine"
    Params = ImagineParams
    outputs = (Port("data.{output}", "image", "the drawn picture"),)
    image_generators = ("generator",)
    held = ("generator_model",)

    @property
    def inputs(self) -> tuple[Port, ...]:
        ports = [Port("query.image", "image", "the image to edit")] if self._edits else []
        used = set(self._prompt().variables)
        if "modification" in used:
            ports.append(Port("{modification}", "text", "the change"))
        ports += [
            Port(f, "texts", f"the {v} to draw") for v, f in _FIELDS.items() if f and v in used
        ]
        return tuple(ports)

    @property
    def _edits(self) -> bool:
        return self.params.task == "edit"

    def _prompt(self) -> Prompt:
        return load_prompt(self.params.prompt or DEFAULT_PROMPTS[self.params.task], stage="imagine")

    def setup(self, ctx: Context) -> None:
        self.prompt = self._prompt()
        self.generator_model = load_generator(self.params.generator, ctx.resources)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        texts = [self.prompt.render(**self._variables(state)) for state in states]
        images = [resolve_reference(s, ctx, self.instance) if self._edits else None for s in states]
        drawn = self.draw_pictures(texts, images, ctx, [self.record(s) for s in states])
        for state, result in zip(states, drawn, strict=True):
            state.data[self.params.output] = result.image
        return states

    def draw_pictures(
        self,
        prompts: Sequence[str],
        images: Sequence[ImageLike | None],
        ctx: Context,
        records: Sequence[StageRecord | None] | None = None,
    ) -> list[Drawn]:
        """Pictures for any prompts (and images to edit) with this stage's generator and
        settings; cached and batched. Tools (gallery twins) reuse it."""
        if not hasattr(self, "generator_model"):
            self.setup(ctx)
        p = self.params
        pictures = [Picture(text, image) for text, image in zip(prompts, images, strict=True)]
        drawn = draw(
            self.generator_model,
            pictures,
            p.rendering,
            cache=ctx.cache,
            stage=self.name,
            batch_size=p.batch_size,
        )
        for record, picture, result in zip(
            records or [None] * len(drawn), pictures, drawn, strict=True
        ):
            if record is not None:
                self._note(record, picture, result)
        return drawn

    def _note(self, record: StageRecord, picture: Picture, result: Drawn) -> None:
        count_cache(record, int(result.cached), int(not result.cached))
        record.notes["imagined"] = {
            "field": f"data.{self.params.output}",
            "prompt": picture.prompt,
            "seed": self.params.seed,
            "size": list(result.image.size),
            "key": result.key[:16],
        }

    def _variables(self, state: QueryState) -> dict[str, str]:
        values = {}
        for name in self.prompt.variables:
            if name == "modification":
                values[name] = resolve_text(state, self.params.modification, self.instance)
            elif name in _FIELDS:
                values[name] = self._first(state, _FIELDS[name])
            else:
                values[name] = self._extra(state, name)
        return values

    def _first(self, state: QueryState, field_name: str) -> str:
        texts = getattr(state, field_name)
        if not texts:
            raise DataError(
                f"query {state.query.id!r}: stage {self.instance!r} draws from {field_name}, "
                "but there are none; put a stage that writes them first"
            )
        return texts[0]

    def _extra(self, state: QueryState, name: str) -> str:
        value = state.query.extras.get(name)
        if not isinstance(value, str):
            raise DataError(
                f"query {state.query.id!r}: prompt {self.prompt.ref} needs {name!r}, which "
                f"stage {self.instance!r} reads from Query.extras, but the query has no such text"
            )
        return value
