"""Where each benchmark's files come from: the shipped ``sources.yaml``, or a file of the same
shape given by path.

Example:
    >>> source = get_source("circo", "official")
    >>> [item.kind for item in source.items]
    ['file', 'file', 'archive', 'image_archive']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cir.errors import ConfigError

CATALOGUE = Path(__file__).with_name("sources.yaml")
DATASETS = ("circo", "cirr", "fashioniq", "genecis")
KINDS = ("file", "archive", "image_archive", "image_urls")


@dataclass(frozen=True)
class Item:
    """One thing to fetch (see the header of ``sources.yaml`` for the kinds)."""

    kind: str
    url: str | None = None
    path: str | None = None
    to: str | None = None
    extract: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None
    size: str | None = None

    @property
    def label(self) -> str:
        """The URL or hub path, for messages and the download record."""
        return self.url or f"hub:{self.path}"

    @property
    def file_name(self) -> str:
        """The last path component of the URL or hub path."""
        return Path(urlsplit(self.url).path if self.url else str(self.path)).name


@dataclass(frozen=True)
class Source:
    """A named way to get one benchmark: its items, licence and the steps left to the user."""

    dataset: str
    name: str
    description: str
    licence: str
    items: tuple[Item, ...]
    manual: str = ""
    hub: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["items"] = [{k: v for k, v in asdict(i).items() if v} for i in self.items]
        return data

    def to_yaml(self, path: str | Path) -> Path:
        """Write this source as a file that ``--source`` accepts."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path


def shipped_sources() -> dict[str, dict[str, Source]]:
    """Every shipped source: dataset → name → source."""
    data = yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))
    return {
        dataset: {name: _source(dataset, name, spec) for name, spec in by_name.items()}
        for dataset, by_name in data.items()
    }


def get_source(dataset: str, source: str | None = None) -> Source:
    """The shipped source ``source`` of ``dataset`` (default ``official``), or a source file."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown benchmark {dataset!r}; valid: {', '.join(DATASETS)}")
    source = source or "official"
    if source.endswith((".yaml", ".yml")) or Path(source).is_file():
        return load_source_file(dataset, source)
    known = shipped_sources()[dataset]
    if source not in known:
        raise ConfigError(
            f"{dataset} has no source {source!r}; valid: {', '.join(known)} "
            "(or the path of a source file, see docs/datasets.md)"
        )
    return known[source]


def load_source_file(dataset: str, path: str | Path) -> Source:
    """A source written as YAML (the shape of ``Source.to_yaml``)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read source file {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"source file {path} must hold a mapping (see sources.yaml)")
    if spec.get("dataset", dataset) != dataset:
        raise ConfigError(f"source file {path} is for {spec['dataset']!r}, not {dataset!r}")
    return _source(dataset, str(spec.get("name") or path.stem), spec)


def _source(dataset: str, name: str, spec: dict[str, Any]) -> Source:
    where = f"source {dataset}/{name}"
    items = spec.get("items")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: 'items' must be a non-empty list")
    hub = spec.get("hub")
    if hub is not None and not (isinstance(hub, dict) and isinstance(hub.get("repo"), str)):
        raise ConfigError(f"{where}: 'hub' must be {{repo: owner/name, revision: ...}}")
    return Source(
        dataset=dataset,
        name=name,
        description=" ".join(str(spec.get("description", "")).split()),
        licence=" ".join(str(spec.get("licence", "")).split()),
        manual=" ".join(str(spec.get("manual") or "").split()),
        hub=dict(hub) if hub else None,
        items=tuple(_item(where, raw, hub is not None) for raw in items),
    )


def _item(where: str, raw: Any, has_hub: bool) -> Item:
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        raise ConfigError(f"{where}: every item needs a kind among {', '.join(KINDS)}: {raw!r}")
    unknown = set(raw) - {"kind", "url", "path", "to", "extract", "sha256", "size"}
    if unknown:
        raise ConfigError(f"{where}: unknown item field(s) {sorted(unknown)}")
    item = Item(**{**raw, "extract": dict(raw.get("extract") or {})})
    if bool(item.url) == bool(item.path) or (item.path and not has_hub):
        raise ConfigError(
            f"{where}: an item has either a url or a hub path (with a 'hub' repo): {raw!r}"
        )
    if item.url and urlsplit(item.url).scheme not in ("http", "https"):
        raise ConfigError(f"{where}: only http(s) URLs are fetched, got {item.url!r}")
    if (item.kind == "file") != bool(item.to) or (item.kind == "archive") != bool(item.extract):
        raise ConfigError(f"{where}: a file item needs 'to', an archive item 'extract': {raw!r}")
    for target in [item.to, *item.extract.values()]:
        if target and (Path(target).is_absolute() or ".." in Path(target).parts):
            raise ConfigError(f"{where}: destinations stay inside --to, got {target!r}")
    return item
