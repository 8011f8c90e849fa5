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

    ``labels`` (one per image, optional) interleave text with the images: each label is shown
    just before its image ("Reference image:", <image>, "Image 1:", <image>, ...).

    Example:
        >>> ChatMessage("user", "Describe this image.", images=(photo,))
        >>> ChatMessage("user", "Which matches best?", (ref, a), labels=("Reference:", "Image 1:"))
    """

    role: str
    content: str
    images: tuple[Image.Image, ...] = ()
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"ChatMessage.role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            kind = type(self.content).__name__
            raise TypeError(f"ChatMessage.content must be a string, got {kind}")
        images = tuple(_as_image(im) for im in self.images)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.labels and len(self.labels) != len(images):
            raise ValueError(
                f"ChatMessage.labels needs one label per image: {len(self.labels)} labels, "
                f"{len(images)} images"
            )

    def parts(self) -> list[tuple[str, Any]]:
        """The message in display order: ``("text", str)`` and ``("image", PIL image)`` items."""
        out: list[tuple[str, Any]] = []
        for i, image in enumerate(self.images):
            if self.labels and self.labels[i]:
                out.append(("text", self.labels[i]))
            out.append(("image", image))
        if self.content:
            out.append(("text", self.content))
        return out


def _as_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str | Path):
        from cir.images import load_image

        return load_image(value)
    raise TypeError(f"ChatMessage.images holds PIL images or paths, got {type(value).__name__}")


@dataclass(frozen=True)
class Sampling:
    """How a model decodes: the one sampling type of cir, held by requests and stage params.

    Temperature 0 (greedy) and a fixed seed by default, so runs repeat.

    Args:
        max_tokens: most new tokens per sample.
        temperature: 0 is greedy decoding; above 0 samples.
        top_p: nucleus sampling mass (with temperature > 0).
        seed: sampling seed; the same seed gives the same samples.
        num_beams: beam search width for greedy decoding (1: no beam search); the transformers
            backend supports it, other backends refuse values above 1.
        min_tokens: fewest new tokens before an end token may stop a sample (0: no minimum);
            transformers and vLLM honour it, the OpenAI-compatible API has no such setting.
        stop: texts that end an answer where they first appear; the answer keeps what comes
            before (every backend applies them; CIReVL and OSrCIR stop at a blank line).

    Example:
        >>> Sampling(temperature=1.0, top_p=0.9, seed=0)     # LDRE-style sampled captions
        >>> Sampling(max_tokens=30, num_beams=5)              # CIReVL's BLIP-2 captions
        >>> Sampling(max_tokens=700, stop=("\n\n", "<|endoftext|>"))   # CIReVL's rewrites
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    num_beams: int = 1
    min_tokens: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_sampling(self.max_tokens, self.temperature, self.top_p, self.num_beams)
        if not 0 <= self.min_tokens <= (self.max_tokens or self.min_tokens):
            limit = f"[0, max_tokens={self.max_tokens}]"
            raise ValueError(f"min_tokens must be within {limit}, got {self.min_tokens}")
        object.__setattr__(self, "stop", check_stop(self.stop))

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (cache keys and manifests); ``num_beams``, ``min_tokens`` and
        ``stop`` only when used."""
        out = dataclasses.asdict(self)
        if self.num_beams == 1:
            del out["num_beams"]
        if self.min_tokens == 0:
            del out["min_tokens"]
        if self.stop:
            out["stop"] = list(self.stop)
        else:
            del out["stop"]
        return out


def check_stop(stop: Any) -> tuple[str, ...]:
    """Stop sequences as a tuple of non-empty strings (ValueError naming what is valid)."""
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
    return tuple(stop)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to the earliest of the ``stop`` sequences (all of it when none occurs).

    Example:
        >>> cut_at_stop("Edited Description: a red car\\n\\nNote: ...", ("\\n\\n",))
        'Edited Description: a red car'
    """
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(ends)] if ends else text


def check_sampling(max_tokens: Any, temperature: Any, top_p: Any, num_beams: Any = 1) -> None:
    """Range checks of the sampling settings (ValueError naming the valid range)."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams > 1 and temperature > 0:
        raise ValueError("num_beams > 1 is beam search, which needs temperature 0")


_SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(Sampling))


@dataclass(frozen=True)
class ChatRequest:
    """A conversation, how to decode it, and what to return.

    Args:
        messages: the conversation, oldest first.
        sampling: the decoding settings (:class:`Sampling`).
        n: number of samples (texts) wanted.
        json_mode: ask the backend to constrain the answer to a JSON object where it can.
        logprobs: k > 0 asks for the top-k log-probabilities of the first generated token.

    The sampling settings are also readable on the request (``req.temperature``, ...).

    Example:
        >>> req = ChatRequest.from_prompt("Describe a red dress.", max_tokens=32)
        >>> req = ChatRequest((ChatMessage("user", "What is shown?", (photo,)),),
        ...                   Sampling(temperature=1.0, top_p=0.9), n=15)
    """

    messages: tuple[ChatMessage, ...]
    sampling: Sampling = Sampling()
    n: int = 1
    json_mode: bool = False
    logprobs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages or not all(isinstance(m, ChatMessage) for m in self.messages):
            raise ValueError("ChatRequest.messages must be a non-empty sequence of ChatMessage")
        if not isinstance(self.sampling, Sampling):
            raise TypeError(f"ChatRequest.sampling must be a Sampling, got {self.sampling!r}")
        if self.n < 1:
            raise ValueError("ChatRequest.n must be >= 1")
        if self.logprobs < 0:
            raise ValueError("ChatRequest.logprobs must be >= 0")

    @classmethod
    def from_prompt(
        cls,
        text: str,
        images: tuple[Image.Image, ...] | list[Image.Image] = (),
        system: str | None = None,
        **settings: Any,
    ) -> ChatRequest:
        """A one-turn request: an optional system message, then the user's text and images.

        ``settings`` are :class:`Sampling` fields (``max_tokens``, ``temperature``, ...) and
        request fields (``n``, ``json_mode``, ``logprobs``).
        """
        messages = [ChatMessage("system", system)] if system else []
        messages.append(ChatMessage("user", text, tuple(images)))
        sampling = {k: settings.pop(k) for k in _SAMPLING_FIELDS if k in settings}
        return cls(tuple(messages), Sampling(**sampling), **settings)

    @property
    def max_tokens(self) -> int:
        return self.sampling.max_tokens

    @property
    def temperature(self) -> float:
        return self.sampling.temperature

    @property
    def top_p(self) -> float:
        return self.sampling.top_p

    @property
    def seed(self) -> int:
        return self.sampling.seed

    @property
    def num_beams(self) -> int:
        return self.sampling.num_beams

    @property
    def min_tokens(self) -> int:
        return self.sampling.min_tokens

    @property
    def stop(self) -> tuple[str, ...]:
        return self.sampling.stop

    @property
    def images(self) -> list[Image.Image]:
        """Every image of the conversation, in order."""
        return [im for m in self.messages for im in m.images]

    @property
    def prompt_text(self) -> str:
        """The messages' text (labels included) joined by blank lines (raw-prompt backends and
        scripted answers)."""
        texts = (value for m in self.messages for kind, value in m.parts() if kind == "text")
        return "\n\n".join(texts)

    @property
    def sampled(self) -> bool:
        return self.sampling.sampled

    def settings(self) -> dict[str, Any]:
        """Sampling and request settings as a JSON-ready dict (for cache keys and manifests)."""
        return {
            **self.sampling.to_dict(),
            "n": self.n,
            "json_mode": self.json_mode,
            "logprobs": self.logprobs,
        }


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


def backend_identity(spec: dict[str, Any]) -> str:
    """The ``identity`` the backend of ``spec`` reports, without loading its model (for writing
    cache entries that a later run with this spec will find)."""
    name, options = validate_spec(spec)
    return _backend_module(name).identity(options)


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


def check_batch(
    backend: str, requests: list[ChatRequest], beam_search: bool = True
) -> list[ChatRequest]:
    """Type-check a batch handed to ``generate`` (a clear error instead of a deep traceback).

    ``beam_search=False`` refuses requests asking for beams, for backends that cannot search.
    """
    requests = list(requests)
    for i, req in enumerate(requests):
        if not isinstance(req, ChatRequest):
            kind = type(req).__name__
            raise TypeError(f"{backend}.generate: item {i} is {kind}, not a ChatRequest")
        if req.num_beams > 1 and not beam_search:
            raise ConfigError(
                f"{backend} cannot decode with beam search (num_beams={req.num_beams}); use the "
                "transformers backend for beam-searched captions, or set num_beams: 1"
            )
    return requests


__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Generation",
    "LLMBackend",
    "Sampling",
    "backend_names",
    "check_batch",
    "check_sampling",
    "load_backend",
    "spec_key",
    "validate_spec",
]
