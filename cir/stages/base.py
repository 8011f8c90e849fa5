"""The stage contract and the registry that names stages in pipeline files.

A stage declares, in plain class attributes:

- ``name``: its registry name (``- stage: <name>`` in YAML) and ``Params``, a frozen dataclass of
  JSON-basic values validated on construction;
- ``inputs`` / ``outputs``: typed :class:`Port` s — which ``QueryState`` field, of what kind
  (text, texts, image, vector, vectors, ranking, data), and which parameter names it;
- ``language_models`` / ``image_generators`` / ``uses_encoder``: the models it loads (so a run
  loads each model when the first stage naming it starts and releases it after the last one),
  ``held``: the attributes that reference them (dropped by ``teardown``);
- ``whole_set``: whether its rule spans the query set (it then sees every query at once).

``setup(ctx)`` loads models through ``ctx.resources``; ``run(states, ctx)`` is batch-first and
returns the states. Construction is cheap and only validates.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from cir.context import Context
from cir.errors import ConfigError
from cir.params import build_params, params_to_dict
from cir.resources import ModelUse
from cir.types import QueryState, StageRecord

__all__ = [
    "KINDS",
    "Context",
    "NoParams",
    "Port",
    "Stage",
    "register_stage",
    "registered_stages",
    "registry_snapshot",
    "stage_class",
]

Kind = Literal["text", "texts", "image", "vector", "vectors", "ranking", "data", "any"]
KINDS: tuple[str, ...] = ("text", "texts", "image", "vector", "vectors", "ranking", "data", "any")
_FIELD_KINDS = {
    "query.text": "text",
    "query.image": "image",
    "captions": "texts",
    "targets": "texts",
    "llm_raw": "texts",
    "reasoning": "texts",
    "ranking": "ranking",
}

_REGISTRY: dict[str, type[Stage]] = {}


@dataclass(frozen=True)
class NoParams:
    """A stage without parameters."""


@dataclass(frozen=True)
class Port:
    """One field a stage reads or writes.

    Args:
        field: the ``QueryState`` field, with ``{param}`` placeholders filled from the stage's
            params (``"embeddings.{output}"``).
        kind: ``text`` (the modification), ``texts`` (captions, targets), ``image``, ``vector``
            (one embedding), ``vectors`` (N embeddings), ``ranking``, ``data``, or ``any``
            (not checked).
        doc: a few words on what the field holds, for ``cir stages list``.

    Example:
        >>> Port("embeddings.{output}", "vector", "the fused query")
    """

    field: str
    kind: Kind
    doc: str = ""

    @property
    def param(self) -> str | None:
        """The parameter that names the field (the first placeholder), if any."""
        names = _placeholders(self.field)
        return names[0] if names else None

    def bind(self, params: Any) -> Port:
        """This port with its placeholders filled from ``params``."""
        if self.param is None:
            return self
        values = {n: getattr(params, n) for n in _placeholders(self.field)}
        return Port(self.field.format(**values), self.kind, self.doc)


def _placeholders(text: str) -> list[str]:
    return [n for _, n, _, _ in string.Formatter().parse(text) if n]


def field_port(field: str) -> Port:
    """A port for a bare field name, its kind known from the field (``any`` for embeddings)."""
    head = field.partition(".")[0]
    return Port(field, _FIELD_KINDS.get(field, "data" if head in ("data", "scores") else "any"))


def _ports_from(fields: property):
    def ports(self: Stage) -> tuple[Port, ...]:
        return tuple(field_port(f) for f in fields.fget(self))

    return ports


class Stage:
    """One step of a pipeline: reads fields of ``QueryState`` and writes others.

    Example:
        >>> @register_stage
        ... class Shout(Stage):
        ...     name = "shout"
        ...     inputs = (Port("query.text", "text"),)
        ...     outputs = (Port("targets", "texts"),)
        ...     def run(self, states, ctx):
        ...         for s in states:
        ...             s.targets = [s.query.text.upper()]
        ...         return states
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    inputs: tuple[Port, ...] = ()
    outputs: tuple[Port, ...] = ()
    language_models: ClassVar[tuple[str, ...]] = ()
    image_generators: ClassVar[tuple[str, ...]] = ()
    uses_encoder: ClassVar[bool] = False
    held: ClassVar[tuple[str, ...]] = ()
    whole_set: bool = False

    def __init__(self, instance: str | None = None, **params: Any) -> None:
        self.instance = instance or self.name
        self.params = build_params(self.Params, params, where=f"stage {self.instance!r}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Stages written against the first contract declare ``reads``/``writes`` as field
        names (tuples or properties); they become ports of a kind known from the field."""
        super().__init_subclass__(**kwargs)
        for old, new in (("reads", "inputs"), ("writes", "outputs")):
            value = cls.__dict__.get(old)
            if isinstance(value, tuple | list):
                setattr(cls, new, tuple(field_port(f) for f in value))
                delattr(cls, old)
            elif isinstance(value, property):
                setattr(cls, new, property(_ports_from(value)))
                delattr(cls, old)

    # ------------------------------------------------------------------ the data flow
    def bound_inputs(self) -> tuple[Port, ...]:
        """The input ports with their field names resolved from the params."""
        return tuple(p.bind(self.params) for p in self.inputs)

    def bound_outputs(self) -> tuple[Port, ...]:
        return tuple(p.bind(self.params) for p in self.outputs)

    @property
    def reads(self) -> tuple[str, ...]:
        """The ``QueryState`` fields this stage reads."""
        return tuple(p.field for p in self.bound_inputs())

    @property
    def writes(self) -> tuple[str, ...]:
        """The ``QueryState`` fields this stage writes."""
        return tuple(p.field for p in self.bound_outputs())

    # ------------------------------------------------------------------ models
    def models(self, ctx: Context) -> list[ModelUse]:
        """The models ``setup`` loads, with the resource keys they are shared under."""
        from cir.diffusion.spec import generator_key
        from cir.llm import spec_key

        uses = [
            ModelUse.language(spec_key(spec), spec, param)
            for param in self.language_models
            if isinstance(spec := getattr(self.params, param), dict)
        ]
        uses += [
            ModelUse.generator(generator_key(spec), spec, param)
            for param in self.image_generators
            if isinstance(spec := getattr(self.params, param), dict)
        ]
        if self.uses_encoder:
            from cir.models.shared import encoder_use

            uses.append(encoder_use(ctx, self.instance, self.params))
        return uses

    def setup(self, ctx: Context) -> None:
        """Load models and other heavy resources (through ``ctx.resources``)."""

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        raise NotImplementedError

    def teardown(self) -> None:
        """Drop this stage's references to its models (``held``), so their memory can go."""
        for attr in self.held:
            self.__dict__.pop(attr, None)

    # ------------------------------------------------------------------ helpers
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
    for port in (*_class_ports(cls, "inputs"), *_class_ports(cls, "outputs")):
        if port.kind not in KINDS:
            raise TypeError(f"{cls.__name__}: port {port.field!r} has unknown kind {port.kind!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _class_ports(cls: type[Stage], attr: str) -> tuple[Port, ...]:
    value = cls.__dict__.get(attr, ())
    return value if isinstance(value, tuple) else ()


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


@contextlib.contextmanager
def registry_snapshot() -> Iterator[None]:
    """Stages registered inside the block are forgotten when it ends (for tests and notebooks).

    Example:
        >>> with registry_snapshot():
        ...     register_stage(MyTestStage)
        ...     load_pipeline(...)              # MyTestStage is known here
        >>> "my_test_stage" in registered_stages()
        False
    """
    _load_builtin_stages()
    saved = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


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
