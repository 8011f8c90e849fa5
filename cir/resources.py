"""A process-wide cache of loaded models, so that stages naming the same model share it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Resources:
    """Loads each resource once per key and hands the same object to every caller.

    Example:
        >>> res = Resources()
        >>> enc = res.get(("encoder", "ViT-B-32/openai", "cpu"), lambda: load_encoder(...))
    """

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The resource under ``key``, built by ``factory()`` on first use (thread-safe)."""
        if key in self._items:
            return self._items[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._items:
                self._items[key] = factory()
        return self._items[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def clear(self) -> None:
        """Drop every loaded resource (frees GPU memory once nothing else holds them)."""
        with self._guard:
            self._items.clear()
            self._locks.clear()


default_resources = Resources()
