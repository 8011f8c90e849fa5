"""What the stages that prompt a model share: parameter checks and building their Generator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from cir.cache import model_revision
from cir.context import Context
from cir.errors import ConfigError
from cir.generation import Generator, policy_override
from cir.llm import Sampling
from cir.prompts import Parser, Prompt, build_parser


@dataclass(frozen=True)
class GenerationParams(Sampling):
    """Decoding (the :class:`~cir.llm.Sampling` fields) and failure handling of prompting stages.

    Subclasses add their model spec and prompt, and may change a default (``max_tokens``).
    ``parser`` holds options laid over the prompt's own parser spec, e.g. ``{pick: first}``
    (CIReVL reads the first labelled line) or ``{bare: true}`` (accept an answer without its
    label); ``stop`` (from :class:`~cir.llm.Sampling`) ends answers at the given texts.
    """

    max_tokens: int = 128
    fallback: Literal["fallback", "retry", "raise"] | None = None
    retries: int | None = None
    chunk_size: int = 64
    parser: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.retries is not None and self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    @property
    def sampling(self) -> Sampling:
        """The decoding settings alone."""
        return Sampling(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Sampling)})


def check_variables(prompt: Prompt, available: set[str], stage: str) -> None:
    """Refuse a prompt that needs variables the stage cannot fill."""
    unknown = sorted(set(prompt.variables) - available)
    if unknown:
        raise ConfigError(
            f"stage {stage!r}: prompt {prompt.ref} needs variable(s) {unknown}, but this stage "
            f"fills only {sorted(available) or 'none'}"
        )


def stage_generator(
    stage: str,
    backend: Any,
    prompt: Prompt,
    params: Any,
    model_spec: dict[str, Any],
    ctx: Context,
    kind: str = "llm",
    **options: Any,
) -> Generator:
    """The Generator of a prompting stage: its sampling, cache, fallback policy and chunking.

    ``params`` (a :class:`GenerationParams`) supplies the decoding settings, ``fallback``,
    ``retries``, ``chunk_size`` and ``parser`` options; ``options`` adds ``n``, ``json_mode``,
    ``logprobs`` or a ``parser`` of the stage's own.
    """
    return Generator(
        backend,
        prompt,
        stage=stage,
        sampling=params.sampling,
        parser=options.pop("parser", None) or stage_parser(prompt, params, stage),
        **options,
        cache=ctx.cache,
        fallback=policy_override(prompt, params.fallback, params.retries),
        chunk_size=params.chunk_size,
        revision=model_revision(str(model_spec.get("model", ""))),
        kind=kind,
    )


def stage_parser(prompt: Prompt, params: Any, stage: str) -> Parser | None:
    """The prompt's parser with the stage's ``parser`` options laid over it (None: as declared)."""
    options = getattr(params, "parser", None)
    if not options:
        return None
    if "kind" in options and options["kind"] != prompt.parser_spec.get("kind"):
        raise ConfigError(
            f"stage {stage!r}: the parser options may not change the parser kind of prompt "
            f"{prompt.ref} ({prompt.parser_spec.get('kind')!r}); got {options['kind']!r}"
        )
    return build_parser({**prompt.parser_spec, **options})
