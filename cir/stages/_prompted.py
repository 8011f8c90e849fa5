"""What the stages that prompt a model share: parameter checks and building their Generator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from cir.cache import model_revision
from cir.context import Context
from cir.errors import ConfigError
from cir.generation import Generator, policy_override
from cir.llm import Sampling
from cir.prompts import Prompt


@dataclass(frozen=True)
class GenerationParams(Sampling):
    """Decoding (the :class:`~cir.llm.Sampling` fields) and failure handling of prompting stages.

    Subclasses add their model spec and prompt, and may change a default (``max_tokens``).
    """

    max_tokens: int = 128
    fallback: Literal["fallback", "retry", "raise"] | None = None
    retries: int | None = None
    chunk_size: int = 64

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
    ``retries`` and ``chunk_size``; ``options`` adds ``n``, ``json_mode`` or ``logprobs``.
    """
    return Generator(
        backend,
        prompt,
        stage=stage,
        sampling=params.sampling,
        **options,
        cache=ctx.cache,
        fallback=policy_override(prompt, params.fallback, params.retries),
        chunk_size=params.chunk_size,
        revision=model_revision(str(model_spec.get("model", ""))),
        kind=kind,
    )
