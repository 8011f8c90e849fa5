"""What the stages that prompt a model share: parameter checks and building their Generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cir.cache import model_revision
from cir.errors import ConfigError
from cir.generation import Generator, Sampling, policy_override
from cir.prompts import Prompt
from cir.stages.base import Context


@dataclass(frozen=True)
class GenerationParams:
    """Sampling and failure handling shared by the stages that prompt a model.

    Subclasses add their model spec and prompt, and may change a default (``max_tokens``).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_tokens: int = 128
    fallback: Literal["fallback", "retry", "raise"] | None = None
    retries: int | None = None
    chunk_size: int = 64

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_p, self.max_tokens, self.chunk_size)
        check_retries(self.retries)


def check_sampling(temperature: float, top_p: float, max_tokens: int, chunk_size: int) -> None:
    """Range checks shared by the language stages (raise ValueError with the valid range)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def check_retries(retries: int | None) -> None:
    if retries is not None and retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")


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
    **sampling: Any,
) -> Generator:
    """The Generator of a prompting stage: its sampling, cache, fallback policy and chunking.

    ``params`` supplies ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``fallback``,
    ``retries`` and ``chunk_size``; ``sampling`` adds settings such as ``n`` or ``json_mode``.
    """
    settings = Sampling(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
        **sampling,
    )
    return Generator(
        backend,
        prompt,
        stage=stage,
        sampling=settings,
        cache=ctx.cache,
        fallback=policy_override(prompt, params.fallback, params.retries),
        chunk_size=params.chunk_size,
        revision=model_revision(str(model_spec.get("model", ""))),
        kind=kind,
    )
