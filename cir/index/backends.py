"""Open a search backend from its spec: ``exact``, ``ivfpq``, ``milvus:URI[#collection]``."""

from __future__ import annotations

from typing import Any

from cir.errors import ConfigError
from cir.index.searchers import ExactSearcher, PositionSearcher

BACKENDS = ("exact", "ivfpq", "milvus:URI[#collection]")


def open_backend(gallery: Any, spec: str, **options: Any) -> PositionSearcher | None:
    """The backend named by ``spec`` over ``gallery`` (None for plain exact search)."""
    if spec in ("exact", "", None):
        if options:
            raise ConfigError(f"the exact backend takes no options, got {sorted(options)}")
        return None
    if spec == "ivfpq":
        from cir.index.ann import IvfPqSearcher

        return IvfPqSearcher.load(gallery, **options)
    if spec.startswith("milvus:"):
        from cir.index.milvus import MilvusSearcher, split_spec

        uri, collection = split_spec(spec)
        return MilvusSearcher.connect(gallery, uri, collection, **options)
    raise ConfigError(f"unknown search backend {spec!r}; valid: {', '.join(BACKENDS)}")


def use_backend(
    index: Any, backend: str = "exact", nprobe: int | None = None, rescore: int | None = None
) -> None:
    """Search ``index`` through ``backend`` with the options given (None: the default)."""
    options = {k: v for k, v in (("nprobe", nprobe), ("rescore", rescore)) if v is not None}
    if backend != "exact" or options:
        index.use_backend(backend, **options)


__all__ = ["BACKENDS", "ExactSearcher", "open_backend"]
