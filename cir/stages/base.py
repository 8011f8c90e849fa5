"""The Stage base class and the registry that names stages in pipeline files."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from cir.errors import ConfigError
from cir.params import build_params, params_to_dict
from cir.resources import Resources, default_resources
from cir.types import QueryState, StageRecord

if TYPE_CHECKING:
    from cir.index import GalleryIndex

_REGISTRY: dict[str, type[Stage]] = {}


@dataclass(frozen=True)
class NoParams:
    """A stage without parameters."""


@dataclass
class Context:
    """What stages share during one run: the index, loaded models, the content cache."""

    index: GalleryIndex | None = None
    resources: Resources = dataclasses.field(default_factory=lambda: default_resources)
    cache: Any = None
    device: str | None = None
    progress: bool = False

    def require_index(self, stage: str) -> GalleryIndex:
        if self.index is None:
            raise ConfigError(f"stage {stage!r} needs a gallery index; pass index=... to run()")
        return self.index


class Stage:
    """One step of a pipeline: reads fields of ``QueryState`` and writes others.

    Subclasses set ``name`` (the registry name used in pipeline files), a frozen ``Params``
    dataclass of JSON-basic values, and implement ``reads``/``writes``, ``setup`` (load models
    through ``ctx.resources``) and a batch-first ``run``. Construction only validates params.

    Example:
        >>> @register_stage
        ... class Shout(Stage):
        ...     name = "shout"
        ...     reads = ("query.text",)
        ...     writes = ("targets",)
        ...     def run(self, states, ctx):
        ...         for s in states:
        ...             s.targets = [s.query.text.upper()]
        ...         return states
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    def __init__(self, instance: str | None = None, **params: Any) -> None:
        self.instance = instance or self.name
        self.params = build_params(self.Params, params, where=f"stage {self.instance!r}")

    def setup(self, ctx: Context) -> None:
        """Load models and other heavy resources (through ``ctx.resources``)."""

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        raise NotImplementedError

    def record(self, state: QueryState) -> StageRecord:
        """This stage's trace record on ``state`` (for cache hits, fallbacks, notes)."""
        return state.record(self.instance)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"stage": self.name}
        if self.instance != self.name:
            entry["name"] = self.instance
        params = params_to_dict(self.params)
        if params:
            entry["params"] = params
        return entry

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.instance!r}, {self.params})"


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make ``cls`` available to pipelines under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no registry name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"stage name {cls.name!r} is taken by {existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def stage_class(name: str) -> type[Stage]:
    """The registered stage class called ``name``."""
    _load_builtin_stages()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown stage {name!r}; registered stages: {', '.join(sorted(_REGISTRY))}"
        ) from None


def registered_stages() -> dict[str, type[Stage]]:
    _load_builtin_stages()
    return dict(sorted(_REGISTRY.items()))


_loaded = False


def _load_builtin_stages() -> None:
    """Import every module of ``cir.stages`` once (each registers its stage)."""
    global _loaded
    if _loaded:
        return
    import cir.stages

    for module in pkgutil.iter_modules(cir.stages.__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"cir.stages.{module.name}")
    _loaded = True
