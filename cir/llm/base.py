"""The protocol every language backend speaks: a batch of chat requests in, generations out.

Captioners, text LLMs and multimodal LLMs are all backends. A backend is named by a spec dict,
``{"backend": "vllm" | "openai" | "transformers" | "scripted", "model": ..., **options}``, and
:func:`load_backend` validates it and loads it once per process (two stages naming the same spec
share one engine).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from cir.errors import ConfigError
from cir.params import build_params, params_to_dict
from cir.resources import Resources, default_resources

ROLES = ("system", "user", "assistant")

# backend name -> module defining ``Options`` (frozen dataclass) and ``build(options)``
_BACKEND_MODULES = {
    "scripted": "cir.llm.scripted",
    "transformers": "cir.llm.transformers_backend",
    "openai": "cir.llm.openai_backend",
    "vllm": "cir.llm.vllm_backend",
}


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation; ``images`` are shown to the model in order, before the text.

    Example:
        >>> ChatMessage("user", "Describe this image.", images=(photo,))
    """

    role: str
    content: str
    images: tuple[Image.Image, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"ChatMessage.role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            kind = type(self.content).__name__
            raise TypeError(f"ChatMessage.content must be a string, got {kind}")
        images = tuple(_as_image(im) for im in self.images)
        object.__setattr__(self, "images", images)


def _as_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str | Path):
        from cir.images import load_image

        return load_image(value)
    raise TypeError(f"ChatMessage.images holds PIL images or paths, got {type(value).__name__}")


@dataclass(frozen=True)
class ChatRequest:
    """A conversation plus sampling settings. Temperature 0 and a fixed seed by default.

    Args:
        messages: the conversation, oldest first.
        max_tokens: most new tokens per sample.
        temperature: 0 is greedy decoding; above 0 samples.
        top_p: nucleus sampling mass (with temperature > 0).
        seed: sampling seed; the same seed gives the same samples.
        n: number of samples (texts) wanted.
        json_mode: ask the backend to constrain the answer to a JSON object where it can.
        logprobs: k > 0 asks for the top-k log-probabilities of the first generated token.

    Example:
        >>> req = ChatRequest.from_prompt("Describe a red dress.", max_tokens=32)
        >>> req = ChatRequest((ChatMessage("user", "What is shown?", (photo,)),), n=15,
        ...                   temperature=1.0, top_p=0.9)
    """

    messages: tuple[ChatMessage, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    n: int = 1
    json_mode: bool = False
    logprobs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages or not all(isinstance(m, ChatMessage) for m in self.messages):
            raise ValueError("ChatRequest.messages must be a non-empty sequence of ChatMessage")
        checks = {
            "max_tokens must be >= 1": self.max_tokens >= 1,
            "temperature must be >= 0": self.temperature >= 0,
            "top_p must be in (0, 1]": 0 < self.top_p <= 1,
            "n must be >= 1": self.n >= 1,
            "logprobs must be >= 0": self.logprobs >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"ChatRequest.{message}")

    @classmethod
    def from_prompt(
        cls,
        text: str,
        images: tuple[Image.Image, ...] | list[Image.Image] = (),
        system: str | None = None,
        **sampling: Any,
    ) -> ChatRequest:
        """A one-turn request: an optional system message, then the user's text and images."""
        messages = [ChatMessage("system", system)] if system else []
        messages.append(ChatMessage("user", text, tuple(images)))
        return cls(tuple(messages), **sampling)

    @property
    def images(self) -> list[Image.Image]:
        """Every image of the conversation, in order."""
        return [im for m in self.messages for im in m.images]

    @property
    def prompt_text(self) -> str:
        """The messages' text joined by blank lines (raw-prompt backends and scripted answers)."""
        return "\n\n".join(m.content for m in self.messages if m.content)

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def sampling(self) -> dict[str, Any]:
        """The sampling settings as a JSON-ready dict (for cache keys and manifests)."""
        names = [f.name for f in dataclasses.fields(self) if f.name != "messages"]
        return {name: getattr(self, name) for name in names}


@dataclass
class Generation:
    """What a backend produced for one request.

    Attributes:
        texts: one text per requested sample (``n`` of them).
        first_token_logprobs: when logprobs were asked for, one dict per sample mapping the top
            first-token candidates (token text) to their log-probability.
        prompt_tokens: prompt length in tokens, where the backend reports it.
        completion_tokens: generated tokens over all samples, where the backend reports it.
    """

    texts: list[str]
    first_token_logprobs: list[dict[str, float]] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def text(self) -> str:
        """The first (or only) sample."""
        return self.texts[0]


@runtime_checkable
class LLMBackend(Protocol):
    """A language backend: batch of requests in, one :class:`Generation` per request out, in order.

    ``identity`` names the model and how it is run (model id, revision, backend) for cache keys and
    manifests; it never contains a secret.
    """

    identity: str

    def generate(self, requests: list[ChatRequest]) -> list[Generation]: ...


def backend_names() -> list[str]:
    """The valid values of a spec's ``backend``."""
    return sorted(_BACKEND_MODULES)


def validate_spec(spec: dict[str, Any]) -> tuple[str, Any]:
    """Check a backend spec; returns the backend name and its validated options.

    Raises:
        ConfigError: the spec is not a dict, names an unknown backend, or has unknown or
            mistyped options (the message lists the valid ones).
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"a backend spec must be a mapping with a 'backend' key, got {spec!r}")
    name = spec.get("backend")
    if name not in _BACKEND_MODULES:
        raise ConfigError(
            f"unknown LLM backend {name!r}; valid backends: {', '.join(backend_names())} "
            "(see docs/backends.md)"
        )
    module = _backend_module(name)
    values = {k: v for k, v in spec.items() if k != "backend"}
    options = build_params(module.Options, values, where=f"LLM backend {name!r}")
    return name, options


def spec_key(spec: dict[str, Any]) -> tuple[str, str]:
    """A hashable, order-independent key for a spec (how resources share engines)."""
    name, options = validate_spec(spec)
    return _key(name, options)


def _key(name: str, options: Any) -> tuple[str, str]:
    return ("llm", json.dumps({"backend": name, **params_to_dict(options)}, sort_keys=True))


def load_backend(spec: dict[str, Any], resources: Resources | None = None) -> LLMBackend:
    """Validate ``spec`` and return its backend, loaded once per ``resources`` (shared).

    Example:
        >>> llm = load_backend({"backend": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"})
        >>> llm.generate([ChatRequest.from_prompt("Say hi.")])[0].text
    """
    name, options = validate_spec(spec)
    resources = resources or default_resources
    module = _backend_module(name)
    return resources.get(_key(name, options), lambda: module.build(options, resources))


def _backend_module(name: str):
    try:
        return importlib.import_module(_BACKEND_MODULES[name])
    except ImportError as exc:
        raise ConfigError(
            f"the {name!r} LLM backend cannot be imported ({exc}); install its extra, e.g. "
            f"pip install 'cir[{name}]' (see docs/backends.md)"
        ) from None


def check_batch(backend: str, requests: list[ChatRequest]) -> list[ChatRequest]:
    """Type-check a batch handed to ``generate`` (a clear error instead of a deep traceback)."""
    requests = list(requests)
    for i, req in enumerate(requests):
        if not isinstance(req, ChatRequest):
            kind = type(req).__name__
            raise TypeError(f"{backend}.generate: item {i} is {kind}, not a ChatRequest")
    return requests


__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Generation",
    "LLMBackend",
    "backend_names",
    "check_batch",
    "load_backend",
    "spec_key",
    "validate_spec",
]
