"""``caption``: reference image → one caption, or N sampled captions, from a captioner backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cir.generation import Ask, Generator, ImageInput
from cir.llm import load_backend
from cir.prompts import load_prompt
from cir.stages._prompted import GenerationParams, check_variables, stage_generator
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import check_source, resolve_image
from cir.types import QueryState, StageRecord

DEFAULT_CAPTIONER = {"backend": "transformers", "model": "Salesforce/blip2-flan-t5-xl"}


@dataclass(frozen=True)
class CaptionParams(GenerationParams):
    captioner: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CAPTIONER))
    prompt: str = "plain"
    num_captions: int = 1
    max_tokens: int = 64
    fallback_caption: str = "an image"
    source: str = "query.image"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self.source, "query.image")
        if self.num_captions < 1:
            raise ValueError(f"num_captions must be >= 1, got {self.num_captions}")
        if self.num_captions > 1 and self.temperature == 0:
            raise ValueError(
                f"num_captions={self.num_captions} needs temperature > 0: greedy decoding "
                "would give the same caption every time (e.g. temperature 1.0, top_p 0.9)"
            )


@register_stage
class Caption(Stage):
    """Caption each reference image with a captioner (BLIP, BLIP-2, a chat VLM).

    One caption with greedy decoding by default; ``num_captions: N`` samples N captions
    (nucleus sampling with ``temperature``/``top_p``, seeded so runs repeat), as LDRE does with
    15 captions. ``prompt`` is a shipped caption prompt (``plain``: no instruction, for BLIP;
    ``detailed``: CIReVL's describe-every-object instruction, for instruction-following captioners)
    or the path of your own prompt file. Captions are cached by image content, captioner, prompt
    and sampling. A caption that fails to parse (an empty answer) follows the prompt's fallback
    policy; the fallback caption is ``fallback_caption``, counted in the trace. ``source:
    data.<name>`` captions a picture an earlier stage drew instead of the reference.

    Papers: CIReVL (Karthik et al., ICLR 2024) captions with BLIP-2; LDRE (Yang et al., SIGIR 2024)
    samples 15 captions per image.

    Example:
        >>> Caption(captioner={"backend": "transformers", "model": "Salesforce/blip2-opt-2.7b"},
        ...         num_captions=15, temperature=1.0, top_p=0.9)
    """

    name = "caption"
    Params = CaptionParams
    inputs = (Port("{source}", "image", "the image to caption (the reference by default)"),)
    outputs = (Port("captions", "texts", "one or N captions of the image"),)
    language_models = ("captioner",)
    held = ("backend",)

    def setup(self, ctx: Context) -> None:
        self.prompt = load_prompt(self.params.prompt, stage="caption")
        check_variables(self.prompt, set(), self.instance)
        self.backend = load_backend(self.params.captioner, ctx.resources)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        source = self.params.source
        images = [resolve_image(state, ctx, source, self.instance) for state in states]
        records = [self.record(state) for state in states]
        captions = self.caption_images(images, ctx, records)
        for state, texts in zip(states, captions, strict=True):
            state.captions = texts
        return states

    def caption_images(
        self,
        images: Sequence[ImageInput],
        ctx: Context,
        records: Sequence[StageRecord | None] | None = None,
    ) -> list[list[str]]:
        """Captions of any images (paths or PIL), ``num_captions`` each; cached and batched.

        Other stages and tools (gallery captions) reuse this with the stage's settings.
        """
        if not hasattr(self, "backend"):
            self.setup(ctx)
        records = list(records) if records is not None else [None] * len(images)
        asks = [
            Ask({}, (image,), fallback=self.params.fallback_caption, record=record)
            for image, record in zip(images, records, strict=True)
        ]
        answers = self.generator(ctx).run(asks)
        return [list(answer.values) for answer in answers]

    def generator(self, ctx: Context) -> Generator:
        p = self.params
        return stage_generator(
            self.name,
            self.backend,
            self.prompt,
            p,
            p.captioner,
            ctx,
            kind="caption",
            n=p.num_captions,
        )
