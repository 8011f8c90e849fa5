"""Loaded models, shared by every stage that names them, loaded and released on a schedule.

A :class:`Resources` loads each resource once per key and hands the same object to every caller.
Resources built while another one is being built (the vLLM engine behind a backend, say) are
remembered as its dependencies, so releasing the backend also stops its engine once nothing else
uses it. Every load and release is recorded in :attr:`Resources.events`, which is how runs prove
their peak (tests and benchmarks read it).

Example:
    >>> res = Resources()
    >>> enc = res.get(("encoder", "ViT-B-32/openai", "cpu"), lambda: load_encoder(...))
    >>> res.release(("encoder", "ViT-B-32/openai", "cpu"))    # memory returned
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ModelUse:
    """A model a stage loads: the key it is shared under and what it is.

    Attributes:
        key: the resource key (two stages with the same key share one loaded model).
        kind: ``language`` (captioners, LLMs, MLLMs), ``generator`` (diffusers pipelines that
            draw or edit pictures) or ``encoder`` (CLIP-style encoders).
        name: the model as the user named it (hub id, local folder, open_clip name).
        spec: the full spec (backend or generator options, or encoder name/tag/preprocessing).
        param: the stage parameter that names it.
    """

    key: Hashable
    kind: str
    name: str
    spec: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    param: str = ""

    @classmethod
    def language(cls, key: Hashable, spec: dict[str, Any], param: str) -> ModelUse:
        name = spec.get("model") or spec.get("name") or "?"
        return cls(key, "language", str(name), dict(spec), param)

    @classmethod
    def generator(cls, key: Hashable, spec: dict[str, Any], param: str) -> ModelUse:
        return cls(key, "generator", str(spec.get("model") or "?"), dict(spec), param)


@dataclass(frozen=True)
class Event:
    """One load or release: when, what, and how many language models were resident after."""

    time: float
    action: str  # "load" or "release"
    key: Hashable
    language_models: int


def _is_language(key: Hashable) -> bool:
    return isinstance(key, tuple) and bool(key) and key[0] == "llm"


class Resources:
    """Loads each resource once per key and hands the same object to every caller.

    Example:
        >>> res = Resources()
        >>> enc = res.get(("encoder", "ViT-B-32/openai", "cpu"), lambda: load_encoder(...))
    """

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._deps: dict[Hashable, set[Hashable]] = {}
        self._closers: dict[Hashable, Callable[[Any], None]] = {}
        self._guard = threading.Lock()
        self._building = threading.local()
        self.events: list[Event] = []

    def get(
        self, key: Hashable, factory: Callable[[], T], close: Callable[[T], None] | None = None
    ) -> T:
        """The resource under ``key``, built by ``factory()`` on first use (thread-safe).

        ``close(resource)`` runs when the resource is released (a vLLM engine's shutdown).
        """
        self._note_dependency(key)
        if key in self._items:
            return self._items[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._items:
                self._items[key] = self._build(key, factory)
                if close is not None:
                    self._closers[key] = close
                self._log("load", key)
        return self._items[key]

    def _build(self, key: Hashable, factory: Callable[[], T]) -> T:
        stack = self._stack()
        stack.append(key)
        try:
            return factory()
        finally:
            stack.pop()

    def _stack(self) -> list[Hashable]:
        if not hasattr(self._building, "stack"):
            self._building.stack = []
        return self._building.stack

    def _note_dependency(self, key: Hashable) -> None:
        stack = self._stack()
        if stack and stack[-1] != key:
            with self._guard:
                self._deps.setdefault(stack[-1], set()).add(key)

    def release(self, key: Hashable) -> bool:
        """Drop ``key`` and, once unused, what it was built on; stop engines, free GPU memory.

        Returns whether anything was released. Resources loaded with a ``close`` callback (vLLM
        engines) are closed; the others are dropped, so their memory goes once no stage
        references them.
        """
        with self._guard:
            released = self._pop_tree(key)
        if not released:
            return False
        for item, close in released:
            if close is not None:
                close(item)
        del released
        _free_memory()
        return True

    def _pop_tree(self, key: Hashable) -> list[tuple[Any, Callable[[Any], None] | None]]:
        if key not in self._items:
            return []
        out = [(self._items.pop(key), self._closers.pop(key, None))]
        self._locks.pop(key, None)
        self._log("release", key)
        for dep in self._deps.pop(key, set()):
            if not any(dep in deps for deps in self._deps.values()):
                out.extend(self._pop_tree(dep))
        return out

    def release_all(self, keys: Iterable[Hashable]) -> None:
        for key in list(keys):
            self.release(key)

    def _log(self, action: str, key: Hashable) -> None:
        count = sum(1 for k in self._items if _is_language(k))
        self.events.append(Event(time.monotonic(), action, key, count))

    def peak_language_models(self, since: int = 0) -> int:
        """Most language models resident at once over ``events[since:]``."""
        return max((e.language_models for e in self.events[since:]), default=0)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def values(self) -> list[Any]:
        return list(self._items.values())

    def clear(self) -> None:
        """Release every loaded resource (engines stopped, GPU memory returned)."""
        self.release_all(self.keys())
        with self._guard:
            self._items.clear()
            self._locks.clear()
            self._deps.clear()
            self._closers.clear()


def _free_memory() -> None:
    """Collect garbage and return cached CUDA blocks to the driver (when torch is loaded)."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


default_resources = Resources()
