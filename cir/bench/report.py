"""Run reports: a markdown page with the metrics table, stage costs and plots.

Plots (matplotlib, written as PNG next to the report): recall at K for every benchmark
(CIRR also its subset recall, FashionIQ per category), and for CIRCO mAP@10 per semantic aspect.

Example:
    >>> write_report(run_dir, manifest)      # writes report.md and the plots
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_K = re.compile(r"^(?:(?P<group>[^/]+)/)?(?P<name>[A-Za-z_]+)@(?P<k>\d+)$")


def recall_series(metrics: Mapping[str, float]) -> dict[str, list[tuple[int, float]]]:
    """Curves of value against K: one per metric family (``Recall``, ``dress/Recall`` ...)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for key, value in metrics.items():
        m = _K.match(key)
        if m is None or m["name"] == "semantic_mAP":
            continue
        label = f"{m['group']}/{m['name']}" if m["group"] else m["name"]
        series.setdefault(label, []).append((int(m["k"]), value))
    return {label: sorted(points) for label, points in series.items()}


def aspect_values(metrics: Mapping[str, float]) -> dict[str, float]:
    """CIRCO's ``semantic_mAP@10/<aspect>`` entries as aspect → value."""
    prefix = "semantic_mAP@10/"
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


def plot_recall(metrics: Mapping[str, float], path: Path, title: str) -> Path | None:
    """Line plot of every metric family against K; None when there is nothing to plot."""
    series = recall_series(metrics)
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        ks, values = zip(*points, strict=True)
        ax.plot(ks, values, marker="o", label=label)
    ax.set_xscale("log")
    ks = sorted({k for points in series.values() for k, _ in points})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_aspects(metrics: Mapping[str, float], path: Path, title: str) -> Path | None:
    """Horizontal bars of CIRCO mAP@10 per semantic aspect; None without aspects."""
    values = aspect_values(metrics)
    if not values:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(values) + 1.2))
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("mAP@10 (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _deviation_lines(manifest: Mapping[str, Any]) -> list[str]:
    """The declared differences from the paper that applied to this run."""
    deviations = manifest.get("deviations")
    if deviations is None:
        return []
    if not deviations:
        return ["Deviations from the paper's setting: none declared.", ""]
    lines = ["## Deviations from the paper's setting", ""]
    lines += [f"- **{d['what']}** — {d['why']} Expected effect: {d['effect']}" for d in deviations]
    return [*lines, ""]


def format_value(value: Any) -> str:
    """Metrics with two decimals; counts (``missing/...``) as integers."""
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def missing_lines(missing: Mapping[str, Any] | None) -> list[str]:
    """The report's warning for a run on an incomplete image folder (``--allow-missing``)."""
    if not missing:
        return []
    if missing["complete"]:
        return ["Run with `--allow-missing`: no image was missing.", ""]
    lines = [
        "## Missing images",
        "",
        f"**Incomplete data: these numbers are not comparable with full-benchmark results.** "
        f"{missing['gallery_images']} of {missing['gallery_total']} gallery images were absent; "
        f"{missing['queries_dropped']} of {missing['queries_total']} queries were dropped "
        "(reference or target absent).",
        "",
    ]
    if missing.get("ground_truths_missing"):
        lines += [f"{missing['ground_truths_missing']} further ground truths were absent.", ""]
    if len(missing.get("by_part", {})) > 1:
        rows = [
            [name, f"{c['gallery_images']} / {c['gallery_total']}",
             f"{c['queries_dropped']} / {c['queries_total']}"]
            for name, c in missing["by_part"].items()
        ]  # fmt: skip
        lines += [markdown_table(["part", "images missing", "queries dropped"], rows), ""]
    return lines


def write_report(run_dir: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``report.md`` (and its plots) for a run into ``run_dir``; returns the report path."""
    run_dir = Path(run_dir)
    metrics: dict[str, float] = manifest.get("metrics") or {}
    title = f"{manifest['dataset']} {manifest['split']} — {manifest['pipeline'].get('name', '')}"
    lines = [f"# {title}", ""]
    lines += [
        f"- queries: {manifest.get('queries')}",
        f"- pipeline: `{manifest['pipeline'].get('name', '')}` (presets: "
        f"{', '.join(manifest.get('presets') or []) or 'none'})",
        f"- models: {', '.join(f'`{m}`' for m in manifest.get('models', [])) or 'none'}",
        f"- created: {manifest.get('created')}",
        "",
    ]
    lines += _deviation_lines(manifest)
    lines += missing_lines(manifest.get("missing"))
    if metrics:
        lines += ["## Metrics", ""]
        rows = [[k, format_value(v)] for k, v in metrics.items()]
        lines += [markdown_table(["metric", "value (%)"], rows)]
        lines.append("")
        for name, plot in (
            ("recall_at_k.png", plot_recall(metrics, run_dir / "recall_at_k.png", title)),
            ("semantic_map10.png", plot_aspects(metrics, run_dir / "semantic_map10.png", title)),
        ):
            if plot is not None:
                lines += [f"![{name}]({name})", ""]
    else:
        lines += ["No metrics: this split's ground truth is not public (submit the files).", ""]
    lines += ["## Stages", ""]
    rows = [
        [
            name,
            s["stage"],
            f"{s['seconds']:.2f}",
            f"{1000 * s['seconds_per_query']:.1f}",
            "-" if s["cache_hit_rate"] is None else f"{100 * s['cache_hit_rate']:.1f}%",
            f"{100 * s['fallback_rate']:.1f}%",
        ]
        for name, s in manifest.get("stages", {}).items()
    ]
    headers = ["stage", "kind", "seconds", "ms/query", "cache hits", "fallbacks"]
    lines += [markdown_table(headers, rows), ""]
    files = manifest.get("files", [])
    if files:
        lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
