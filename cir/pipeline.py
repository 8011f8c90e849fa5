"""Declarative pipelines: stages named in YAML, validated at load time, run in batches."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from cir._paths import shipped_dir
from cir.errors import ConfigError
from cir.resources import Resources, default_resources
from cir.stages.base import Context, Stage, registered_stages, stage_class
from cir.types import Query, QueryState, StageRecord

#: Fields every query provides (``query.image`` is checked per query at run time).
QUERY_FIELDS = ("query.text", "query.image")
_ENTRY_KEYS = {"stage", "name", "params"}
_TOP_KEYS = {"name", "description", "stages", "presets", "paper"}


class Pipeline:
    """An ordered chain of stages over a gallery index.

    Example:
        >>> pipe = load_pipeline("clip_fusion", overrides=["stages.fuse.alpha=0.7"])
        >>> states = pipe.run([Query("make it red", reference="dress.jpg")], index)
        >>> states[0].ranking.ids[:5]
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        name: str = "",
        description: str = "",
        presets: dict[str, dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.stages = list(stages)
        self.name = name
        self.description = description
        self.presets = presets or {}
        self.extra = extra or {}
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(
        cls,
        spec: dict[str, Any],
        overrides: Iterable[str] | dict[str, Any] = (),
        preset: str | None = None,
    ) -> Pipeline:
        """Build from a mapping shaped like a pipeline YAML file.

        ``preset`` applies a named set of overrides from the file's ``presets:`` section first;
        ``overrides`` (``"stages.fuse.alpha=0.7"`` strings or a dict) are applied after it.
        """
        if not isinstance(spec, dict):
            raise ConfigError(f"a pipeline must be a mapping, got {type(spec).__name__}")
        spec = copy.deepcopy(spec)
        unknown = set(spec) - _TOP_KEYS
        if unknown:
            raise ConfigError(
                f"unknown top-level key(s) {', '.join(sorted(unknown))} in pipeline "
                f"{spec.get('name', '')!r}; valid keys: {', '.join(sorted(_TOP_KEYS))}"
            )
        presets = spec.get("presets") or {}
        if preset is not None:
            if preset not in presets:
                valid = ", ".join(sorted(presets)) or "(none)"
                raise ConfigError(f"unknown preset {preset!r}; this pipeline has: {valid}")
            spec = apply_overrides(spec, presets[preset])
        spec = apply_overrides(spec, overrides)
        stages = [_build_stage(entry, i) for i, entry in enumerate(_entries(spec))]
        extra = {k: v for k, v in spec.items() if k == "paper"}
        return cls(stages, spec.get("name", ""), spec.get("description", ""), presets, extra)

    @classmethod
    def from_yaml(
        cls, source: str | Path, overrides: Iterable[str] | dict[str, Any] = (), preset=None
    ) -> Pipeline:
        """Build from a YAML file path or a YAML string."""
        text = Path(source).read_text() if _is_file(source) else str(source)
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"pipeline YAML does not parse: {exc}") from None
        return cls.from_dict(spec, overrides, preset)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out.update(self.extra)
        out["stages"] = [stage.to_dict() for stage in self.stages]
        if self.presets:
            out["presets"] = copy.deepcopy(self.presets)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def stage(self, name: str) -> Stage:
        """The stage instance called ``name``."""
        for stage in self.stages:
            if stage.instance == name:
                return stage
        raise ConfigError(f"no stage named {name!r}; stages: {self._names()}")

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.instance in seen:
                raise ConfigError(
                    f"two stages are named {stage.instance!r}; give one a distinct `name:`"
                )
            seen.add(stage.instance)
        available = set(QUERY_FIELDS)
        for stage in self.stages:
            missing = [f for f in stage.reads if f not in available]
            if missing:
                raise ConfigError(_missing_message(stage, missing[0], available))
            available.update(stage.writes)

    def _names(self) -> str:
        return ", ".join(s.instance for s in self.stages)

    # ------------------------------------------------------------------ running
    def setup(self, ctx: Context) -> None:
        """Load every stage's models (shared through ``ctx.resources``)."""
        for stage in self.stages:
            stage.setup(ctx)

    def run(
        self,
        queries: Sequence[Query],
        index: Any = None,
        batch_size: int = 32,
        cache: Any = None,
        resources: Resources | None = None,
        device: str | None = None,
        progress: bool | None = None,
        on_stage: Callable[[int, int, str], None] | None = None,
    ) -> list[QueryState]:
        """Run every query through the stages, ``batch_size`` queries at a time.

        Args:
            queries: the requests.
            index: the ``GalleryIndex`` to search (stages that need none accept None).
            batch_size: queries per batch (each stage sees a whole batch at once).
            cache: a ``ContentCache`` for captions, LLM outputs and embeddings, or None.
            resources: shared model cache (defaults to the process-wide one).
            device: force a device for models; automatic when None.
            progress: show a progress bar (default: when there is more than one batch).
            on_stage: called as ``on_stage(position, number_of_stages, stage_name)`` before each
                stage runs on a batch (for progress displays).

        Returns:
            One ``QueryState`` per query, in order, with ranking and trace.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        queries = list(queries)
        show = progress if progress is not None else len(queries) > batch_size
        ctx = Context(index, resources or default_resources, cache, device, show)
        self.setup(ctx)
        out: list[QueryState] = []
        with tqdm(total=len(queries), desc=self.name or "pipeline", disable=not show) as bar:
            for start in range(0, len(queries), batch_size):
                batch = queries[start : start + batch_size]
                out.extend(self.run_batch([QueryState(q) for q in batch], ctx, on_stage))
                bar.update(len(batch))
        return out

    def run_batch(
        self,
        states: list[QueryState],
        ctx: Context,
        on_stage: Callable[[int, int, str], None] | None = None,
    ) -> list[QueryState]:
        """Run the stages over one batch of states (models must be set up)."""
        for position, stage in enumerate(self.stages):
            if on_stage is not None:
                on_stage(position, len(self.stages), stage.instance)
            for state in states:
                state.trace.append(StageRecord(stage=stage.name, name=stage.instance))
            started = time.perf_counter()
            states = stage.run(states, ctx)
            share = (time.perf_counter() - started) / max(len(states), 1)
            for state in states:
                stage.record(state).seconds += share
        return states

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}: {' -> '.join(s.instance for s in self.stages)})"


# ---------------------------------------------------------------------- loading by name
def list_pipelines() -> list[str]:
    """Names of the shipped pipelines (``load_pipeline`` accepts each)."""
    return sorted(p.stem for p in shipped_dir("pipelines").glob("*.yaml"))


def pipeline_path(name_or_path: str | Path) -> Path:
    """The YAML file for a shipped pipeline name or a path."""
    if _is_file(name_or_path):
        return Path(name_or_path)
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        raise ConfigError(f"pipeline file {text!r} does not exist")
    path = shipped_dir("pipelines") / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown pipeline {text!r}; shipped pipelines: {', '.join(list_pipelines())} "
            "(or give the path of a YAML file)"
        )
    return path


def load_pipeline(
    name_or_path: str | Path,
    overrides: Iterable[str] | dict[str, Any] = (),
    preset: str | None = None,
) -> Pipeline:
    """Load a shipped pipeline by name (``"clip_fusion"``) or a YAML file by path.

    Example:
        >>> load_pipeline("clip_fusion", overrides=["stages.retrieve.k=10"])
    """
    return Pipeline.from_yaml(pipeline_path(name_or_path), overrides, preset)


# ---------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, Any]:
    """``"stages.fuse.alpha=0.7"`` -> ``("stages.fuse.alpha", 0.7)`` (value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like stages.<stage>.<param>=<value>")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(
    spec: dict[str, Any], overrides: Iterable[str] | dict[str, Any]
) -> dict[str, Any]:
    """A copy of ``spec`` with dotted overrides applied (``stages.<name>.<param>[.<key>...]``)."""
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    spec = copy.deepcopy(spec)
    for key, value in items:
        parts = key.split(".")
        if parts[0] != "stages" or len(parts) < 3:
            if len(parts) == 1 and parts[0] in ("name", "description"):
                spec[parts[0]] = value
                continue
            raise ConfigError(f"override {key!r} must start with stages.<stage name>.<param>")
        entry = _find_entry(spec, parts[1])
        target = entry.setdefault("params", {})
        for part in parts[2:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
        target[parts[-1]] = value
    return spec


def _entries(spec: dict[str, Any]) -> list[dict[str, Any]]:
    entries = spec.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("a pipeline needs a non-empty list under `stages:`")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"stages[{i}] must be a mapping with a `stage:` key, got {entry!r}")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(
                f"stages[{i}] ({entry['stage']}): unknown key(s) {', '.join(sorted(unknown))}; "
                f"valid keys: stage, name, params (stage parameters go under `params:`)"
            )
    return entries


def _find_entry(spec: dict[str, Any], name: str) -> dict[str, Any]:
    entries = _entries(spec)
    for entry in entries:
        if entry.get("name", entry["stage"]) == name:
            return entry
    names = ", ".join(e.get("name", e["stage"]) for e in entries)
    raise ConfigError(f"override names stage {name!r}, but the pipeline's stages are: {names}")


def _build_stage(entry: dict[str, Any], position: int) -> Stage:
    cls = stage_class(entry["stage"])
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"stages[{position}] ({entry['stage']}): `params:` must be a mapping")
    return cls(entry.get("name"), **params)


def _missing_message(stage: Stage, field: str, available: set[str]) -> str:
    writers = []
    for name, cls in registered_stages().items():
        try:
            if field in cls().writes:
                writers.append(name)
        except ConfigError:
            continue
    hint = f"stages that can write it: {', '.join(writers)}" if writers else "no stage writes it"
    return (
        f"stage {stage.instance!r} reads {field!r}, but no earlier stage writes it ({hint}); "
        f"available at that point: {', '.join(sorted(available))}"
    )


def _is_file(source: str | Path) -> bool:
    try:
        return Path(source).is_file()
    except (OSError, ValueError):
        return False
