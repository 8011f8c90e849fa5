"""``cir bench compare``: the metrics of several runs side by side, and how the runs differ.

Each run folder written by ``cir bench run`` holds a ``manifest.json`` with the metrics and
everything that produced them. The comparison puts the metrics in one table (with each run's
difference to the first), lists the manifest entries that differ between the runs (pipeline
parameters, models, prompts, presets, overrides, data, package versions), warns when runs are
not comparable (another dataset or split, incomplete data), and plots the shared metrics.

Example:
    >>> comparison = compare_runs(["runs/cirr-clip", "runs/cirr-cirevl"])
    >>> print(comparison.markdown())
    >>> comparison.write("runs/compare")       # compare.md, compare.json, compare.png
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir.bench.report import format_value, markdown_table, pyplot
from cir.errors import ConfigError, DataError

#: Manifest entries compared between runs (``pipeline`` is compared parameter by parameter).
COMPARED = ("dataset", "split", "preset", "overrides", "text_rule", "complete", "models",
            "prompts", "pipeline", "index", "missing", "packages")  # fmt: skip
#: Entries that differ between any two runs and say nothing about how numbers were made.
IGNORED = ("missing.examples", "missing.by_part")


@dataclass
class Run:
    """One run folder: its label (the folder name), manifest and metrics."""

    label: str
    path: Path
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.manifest.get("metrics") or {})


@dataclass
class Comparison:
    """Runs, the union of their metrics, and the manifest entries that differ."""

    runs: list[Run]
    metrics: list[str]
    differences: dict[str, list[Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def value(self, run: Run, metric: str) -> float | None:
        return run.metrics.get(metric)

    def delta(self, run: Run, metric: str) -> float | None:
        """``run``'s value minus the first run's, when both exist."""
        base, value = self.value(self.runs[0], metric), self.value(run, metric)
        if base is None or value is None or run is self.runs[0]:
            return None
        return round(value - base, 4)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [{"label": r.label, "path": str(r.path)} for r in self.runs],
            "metrics": {m: {r.label: self.value(r, m) for r in self.runs} for m in self.metrics},
            "delta_to_first": {
                m: {r.label: self.delta(r, m) for r in self.runs[1:]} for m in self.metrics
            },
            "differences": self.differences,
            "warnings": self.warnings,
        }

    def markdown(self, plot: str | None = None) -> str:
        labels = [r.label for r in self.runs]
        lines = ["# Run comparison", ""]
        lines += [f"- `{r.label}`: {_summary(r.manifest)}" for r in self.runs] + [""]
        lines += [f"**Warning:** {w}" for w in self.warnings] + ([""] if self.warnings else [])
        rows = [[m, *(self._cell(r, m) for r in self.runs)] for m in self.metrics]
        lines += ["## Metrics", "", "Differences to the first run in brackets.", ""]
        lines += [markdown_table(["metric", *labels], rows), ""]
        if plot:
            lines += [f"![metrics]({plot})", ""]
        lines += ["## What differs", ""]
        if self.differences:
            diff_rows = [[f"`{k}`", *(_short(v) for v in vs)] for k, vs in self.differences.items()]
            lines += [markdown_table(["manifest entry", *labels], diff_rows), ""]
        else:
            lines += ["Nothing: the manifests agree on pipeline, models, prompts and data.", ""]
        return "\n".join(lines)

    def _cell(self, run: Run, metric: str) -> str:
        value = self.value(run, metric)
        if value is None:
            return "-"
        delta = self.delta(run, metric)
        return format_value(value) + ("" if delta is None else f" ({delta:+.2f})")

    def plot(self, path: Path) -> Path | None:
        """Grouped bars of the metrics every run has (counts left out); None when none."""
        shared = [m for m in self.metrics if not m.startswith("missing/")
                  and all(self.value(r, m) is not None for r in self.runs)]  # fmt: skip
        if not shared:
            return None
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(shared) * len(self.runs)), 4))
        width = 0.8 / len(self.runs)
        for i, run in enumerate(self.runs):
            xs = [j + i * width for j in range(len(shared))]
            ax.bar(xs, [self.value(run, m) for m in shared], width, label=run.label)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shared))], shared, rotation=45,
                      ha="right", fontsize=8)  # fmt: skip
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``compare.md``, ``compare.json`` and (when there is a shared metric)
        ``compare.png`` into ``out_dir``; returns the paths written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot = self.plot(out / "compare.png")
        md = out / "compare.md"
        md.write_text(self.markdown("compare.png" if plot else None), encoding="utf-8")
        js = out / "compare.json"
        js.write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        return [md, js, *([plot] if plot else [])]


def load_run(path: str | Path) -> Run:
    """A run folder's manifest, with a clear error for anything else."""
    folder = Path(path)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(
            f"{folder} is not a run folder: it has no manifest.json (run folders are written "
            "by `cir bench run`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{manifest_path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("metrics", {}), dict):
        raise DataError(f"{manifest_path} is not a cir run manifest (no metrics object)")
    return Run(folder.resolve().name or str(folder), folder, manifest)


def compare_runs(paths: Sequence[str | Path]) -> Comparison:
    """Compare the runs in ``paths`` (at least two; the first is the baseline)."""
    if len(paths) < 2:
        raise ConfigError("give at least two run folders to compare")
    runs = [load_run(p) for p in paths]
    _unique_labels(runs)
    metrics = list(dict.fromkeys(m for r in runs for m in r.metrics))
    flats = [flatten({k: r.manifest.get(k) for k in COMPARED}) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    differences = {
        k: [f.get(k) for f in flats]
        for k in keys
        if not k.startswith(IGNORED) and len({json.dumps(f.get(k), default=str) for f in flats}) > 1
    }
    return Comparison(runs, metrics, differences, _warnings(runs))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested manifest entries as ``dotted.key`` → value; pipeline stages are keyed by their
    instance name (``pipeline.stages.fuse.params.alpha``) so reordering does not hide a change."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    if prefix.endswith("stages.") and isinstance(obj, list):
        named = {str(s.get("name") or s.get("stage")): s for s in obj if isinstance(s, Mapping)}
        if len(named) == len(obj):
            return flatten(named, prefix)
    return {prefix.rstrip("."): obj}


def _unique_labels(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        n = seen.get(run.label, 0)
        seen[run.label] = n + 1
        if n:
            run.label = f"{run.label}#{n + 1}"


def _warnings(runs: list[Run]) -> list[str]:
    found = []
    setups = {(r.manifest.get("dataset"), r.manifest.get("split")) for r in runs}
    if len(setups) > 1:
        found.append(f"the runs are on different benchmarks or splits: {sorted(map(str, setups))}")
    for run in runs:
        missing = run.manifest.get("missing") or {}
        if missing and not missing.get("complete", True):
            found.append(
                f"`{run.label}` ran on incomplete data ({missing.get('gallery_images')} gallery "
                f"images missing, {missing.get('queries_dropped')} queries dropped)"
            )
        elif run.manifest.get("complete") is False:
            found.append(f"`{run.label}` did not run every query (--limit)")
    return found


def _summary(manifest: Mapping[str, Any]) -> str:
    pipeline = manifest.get("pipeline") or {}
    return (
        f"{manifest.get('dataset')} {manifest.get('split')}, pipeline "
        f"`{pipeline.get('name', '?')}`, preset {manifest.get('preset') or 'none'}, "
        f"{manifest.get('queries')} queries"
    )


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
