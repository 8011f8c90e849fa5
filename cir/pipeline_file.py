"""The pipeline file: its top-level keys, dotted overrides, presets, deviations and knobs.

A pipeline file is YAML::

    name: cirevl
    description: ...
    paper: ...
    encoder: {model: ViT-L-14, pretrained: openai, preprocessing: targetpad}
    stages: [...]
    presets:                 # applied by name; `cir bench run D` applies D, @B and D@B
      circo: {stages.retrieve.exclude_reference: false}
      cirr@ViT-bigG-14: {stages.retrieve.rule_params.lambda_neg: 0.22}
    deviations:              # every remaining difference from the paper (empty: none)
      - {what: ..., why: ..., effect: ..., presets: [cirr]}
    knobs:                   # what the demo lets people change
      alpha: {label: "α (text weight)", set: [stages.fuse.alpha], range: [0, 1], step: 0.05}

This module reads and checks those parts; :mod:`cir.pipeline` builds the stages.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cir._paths import shipped_dir
from cir.errors import ConfigError

TOP_KEYS = (
    "name", "description", "paper", "encoder", "gallery_captions", "stages", "presets",
    "deviations", "published", "knobs",
)  # fmt: skip
#: Top-level sections that are mappings, set field by field (``encoder.model=...``).
SECTIONS = ("encoder", "gallery_captions")
ENTRY_KEYS = {"stage", "name", "params"}
KNOB_KEYS = ("alpha", "beta", "top_k", "rerank_mode")
"""The controls the demo page offers; a pipeline maps each it supports to its parameters."""


# ---------------------------------------------------------------------- loading by name
def list_pipelines() -> list[str]:
    """Names of the shipped pipelines (``load_pipeline`` accepts each)."""
    return sorted(p.stem for p in shipped_dir("pipelines").glob("*.yaml"))


def pipeline_path(name_or_path: str | Path) -> Path:
    """The YAML file for a shipped pipeline name or a path."""
    if is_file(name_or_path):
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


def read_spec(source: str | Path) -> dict[str, Any]:
    """The mapping in a pipeline YAML file (a path) or YAML text."""
    text = Path(source).read_text(encoding="utf-8") if is_file(source) else str(source)
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline YAML does not parse: {exc}") from None
    check_top_level(spec)
    return spec


def check_top_level(spec: Any) -> None:
    if not isinstance(spec, dict):
        raise ConfigError(f"a pipeline must be a mapping, got {type(spec).__name__}")
    unknown = set(spec) - set(TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(sorted(unknown))} in pipeline "
            f"{spec.get('name', '')!r}; valid keys: {', '.join(TOP_KEYS)}"
        )


def is_file(source: str | Path) -> bool:
    try:
        return Path(source).is_file()
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------- presets
def preset_names(presets: dict[str, Any], dataset: str | None, backbone: str | None) -> list[str]:
    """The presets a run on ``dataset`` with encoder ``backbone`` applies, in order:
    ``dataset``, ``@backbone``, ``dataset@backbone`` (those the file has)."""
    wanted = [dataset, f"@{backbone}" if backbone else None]
    wanted.append(f"{dataset}@{backbone}" if dataset and backbone else None)
    return [name for name in wanted if name and name in presets]


def apply_presets(spec: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``spec`` with the named presets applied in order (each must exist)."""
    presets = spec.get("presets") or {}
    if not isinstance(presets, dict):
        raise ConfigError("`presets:` must map preset names to overrides")
    for name in names:
        if name not in presets:
            valid = ", ".join(sorted(presets)) or "(none)"
            raise ConfigError(f"unknown preset {name!r}; this pipeline has: {valid}")
        spec = apply_overrides(spec, presets[name])
    return spec


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
    """A copy of ``spec`` with dotted overrides applied.

    Keys: ``stages.<name>.<param>[.<key>...]``, ``encoder.<field>`` and
    ``gallery_captions.<field>[.<key>...]`` (or the section's name for all of it), ``name``,
    ``description``.
    """
    if overrides is None:
        return copy.deepcopy(spec)
    if not isinstance(overrides, dict | list | tuple):
        raise ConfigError(f"overrides must be a mapping or a list of key=value, got {overrides!r}")
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    spec = copy.deepcopy(spec)
    for key, value in items:
        parts = str(key).split(".")
        if parts[0] in ("name", "description", *SECTIONS) and len(parts) == 1:
            spec[parts[0]] = value
        elif parts[0] in SECTIONS and len(parts) >= 2:
            spec[parts[0]] = _set_in_section(spec.get(parts[0]), parts[1:], value, key)
        elif parts[0] == "stages" and len(parts) >= 3:
            _set_param(_find_entry(spec, parts[1]), parts[2:], value, key)
        else:
            raise ConfigError(
                f"override {key!r} must be stages.<stage name>.<param>, encoder.<field>, "
                "gallery_captions.<field>, name or description"
            )
    return spec


def _set_in_section(section: Any, path: list[str], value: Any, key: str) -> dict[str, Any]:
    """A copy of a top-level section with ``path`` set (``encoder: ViT-L-14`` is a model)."""
    section = {"model": section} if isinstance(section, str) else copy.deepcopy(section or {})
    if not isinstance(section, dict):
        raise ConfigError(f"override {key!r}: {path[0]!r} is not in a mapping")
    _set_param({"params": section}, path, value, key)
    return section


def _set_param(entry: dict[str, Any], path: list[str], value: Any, key: str) -> None:
    target = entry.setdefault("params", {})
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
    target[path[-1]] = value


def entries(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The checked ``stages:`` entries of a spec."""
    found = spec.get("stages")
    if not isinstance(found, list) or not found:
        raise ConfigError("a pipeline needs a non-empty list under `stages:`")
    for i, entry in enumerate(found):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"stages[{i}] must be a mapping with a `stage:` key, got {entry!r}")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise ConfigError(
                f"stages[{i}] ({entry['stage']}): unknown key(s) {', '.join(sorted(unknown))}; "
                f"valid keys: stage, name, params (stage parameters go under `params:`)"
            )
    return found


def _find_entry(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = entries(spec)
    for entry in found:
        if entry.get("name", entry["stage"]) == name:
            return entry
    names = ", ".join(e.get("name", e["stage"]) for e in found)
    raise ConfigError(f"override names stage {name!r}, but the pipeline's stages are: {names}")


# ---------------------------------------------------------------------- deviations and knobs
@dataclass(frozen=True)
class Deviation:
    """One difference from the paper a pipeline reproduces: what, why, and its expected effect.

    ``presets`` limits it to runs applying one of those presets (empty: every run).
    """

    what: str
    why: str
    effect: str
    presets: tuple[str, ...] = ()

    def applies(self, presets: Sequence[str]) -> bool:
        return not self.presets or any(p in self.presets for p in presets)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.what, "why": self.why, "effect": self.effect}
        if self.presets:
            out["presets"] = list(self.presets)
        return out


def read_deviations(value: Any) -> tuple[Deviation, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("`deviations:` must be a list of {what, why, effect} (empty: none)")
    out = []
    for i, item in enumerate(value):
        keys = {"what", "why", "effect", "presets"}
        if not isinstance(item, dict) or not {"what", "why", "effect"} <= set(item) <= keys:
            raise ConfigError(
                f"deviations[{i}] must have `what`, `why` and `effect` (and optionally "
                f"`presets`), got {item!r}"
            )
        presets = tuple(item.get("presets") or ())
        out.append(Deviation(str(item["what"]), str(item["why"]), str(item["effect"]), presets))
    return tuple(out)


@dataclass(frozen=True)
class Knob:
    """A control of the demo page and the parameters it sets (one value may feed several).

    Attributes:
        key: one of :data:`KNOB_KEYS`.
        label: what the page calls it.
        targets: dotted override paths the value is written to.
        low / high / step: the slider's range (numeric knobs).
        choices: the valid values (choice knobs).
    """

    key: str
    label: str
    targets: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = field(default=())

    def overrides(self, value: Any) -> dict[str, Any]:
        """The overrides that set every target to ``value`` (checked and converted)."""
        if self.choices:
            if value not in self.choices:
                raise ConfigError(
                    f"{self.label}: {value!r} is not one of {', '.join(self.choices)}"
                )
        else:
            value = int(value) if self.key == "top_k" else float(value)
            if not self.low <= value <= self.high:
                raise ConfigError(f"{self.label}: {value} is outside [{self.low}, {self.high}]")
        return {target: value for target in self.targets}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "set": list(self.targets)}
        if self.choices:
            out["choices"] = list(self.choices)
        else:
            out["range"] = [self.low, self.high]
            out["step"] = self.step
        return out


def read_knobs(value: Any) -> dict[str, Knob]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("`knobs:` must map knob names to {label, set, range|choices}")
    return {key: _knob(key, item) for key, item in value.items()}


def _knob(key: str, item: Any) -> Knob:
    if key not in KNOB_KEYS:
        raise ConfigError(f"unknown knob {key!r}; the demo offers: {', '.join(KNOB_KEYS)}")
    targets = item.get("set") if isinstance(item, dict) else None
    if isinstance(targets, str):
        targets = [targets]
    if not targets or not all(isinstance(t, str) and t.startswith("stages.") for t in targets):
        raise ConfigError(f"knob {key!r} needs `set:` with stages.<stage>.<param> paths")
    label = str(item.get("label", key))
    if "choices" in item:
        return Knob(key, label, tuple(targets), choices=tuple(str(c) for c in item["choices"]))
    low, high = item.get("range", (None, None))
    if not isinstance(low, int | float) or not isinstance(high, int | float) or low > high:
        raise ConfigError(f"knob {key!r} needs `range: [low, high]` (numbers) or `choices:`")
    step = item.get("step", 1 if key == "top_k" else 0.05)
    return Knob(key, label, tuple(targets), float(low), float(high), float(step))
