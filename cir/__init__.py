"""cir: training-free composed image retrieval with declarative pipelines of frozen models.

Example:
    >>> from cir import GalleryIndex, Query, load_pipeline
    >>> index = GalleryIndex.load("my_index")
    >>> pipe = load_pipeline("clip_fusion")
    >>> state = pipe.run([Query("the same dress in red", reference="dress.jpg")], index)[0]
    >>> state.ranking.ids[:5]
"""

from __future__ import annotations

import importlib
from typing import Any

from cir.errors import BackendError, CirError, ConfigError, DataError, EncoderMismatchError
from cir.types import Query, QueryState, Ranking, StageRecord

__version__ = "0.1.0"

# Heavier parts are imported on first use, so `import cir` stays light.
_LAZY = {
    "GalleryIndex": "cir.index",
    "Pipeline": "cir.pipeline",
    "load_pipeline": "cir.pipeline",
    "list_pipelines": "cir.pipeline",
    "load_encoder": "cir.models",
    "Stage": "cir.stages.base",
    "Port": "cir.stages.base",
    "Context": "cir.context",
    "register_stage": "cir.stages.base",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cir' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "BackendError",
    "CirError",
    "ConfigError",
    "Context",
    "DataError",
    "EncoderMismatchError",
    "GalleryIndex",
    "Pipeline",
    "Port",
    "Query",
    "QueryState",
    "Ranking",
    "Stage",
    "StageRecord",
    "__version__",
    "list_pipelines",
    "load_encoder",
    "load_pipeline",
    "register_stage",
]
