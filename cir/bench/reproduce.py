"""The published rows of every pipeline: the paper's numbers and the command that reproduces each.

``docs/reproduce.md`` is :func:`reproduce_table` (``cir pipelines reproduce-table``), and
``cir bench reproduce PIPELINE DATASET [--backbone B]`` runs one row's command.

Example:
    >>> row = find_row("seize", "cirr", "ViT-bigG-14")
    >>> " ".join(row.command("/data/cirr"))
    'cir bench run cirr --split test --data-root /data/cirr --pipeline seize'
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cir.errors import ConfigError
from cir.pipeline import Pipeline, list_pipelines, load_pipeline
from cir.pipeline_file import preset_names
from cir.published import Published

DATA_ROOT = "DATA"
"""The placeholder of the data root in the documented commands."""


@dataclass(frozen=True)
class ReproduceRow:
    """One published setting of a pipeline: the numbers, the run's arguments, its deviations."""

    pipeline: str
    published: Published
    encoder: str | None
    deviations: tuple[str, ...]

    def arguments(self, data_root: str = DATA_ROOT) -> list[str]:
        """The ``cir bench run`` arguments (after ``run``) that reproduce this row."""
        row = self.published
        args = [row.dataset, "--split", row.split, "--data-root", data_root]
        args += ["--pipeline", self.pipeline]
        return args + (["--encoder", self.encoder] if self.encoder else [])

    def command(self, data_root: str = f"{DATA_ROOT}") -> list[str]:
        return ["cir", "bench", "run", *self.arguments(data_root)]


def rows(pipelines: list[str] | None = None) -> list[ReproduceRow]:
    """Every published row of the shipped pipelines (or of ``pipelines``), in file order."""
    out = []
    for name in pipelines or list_pipelines():
        pipe = load_pipeline(name)
        out += [_row(name, pipe, published) for published in pipe.published]
    return out


def _row(name: str, pipe: Pipeline, published: Published) -> ReproduceRow:
    own = pipe.encoder
    encoder = published.encoder
    if own is not None and encoder in (None, own.label) and own.backbone == published.backbone:
        encoder = None  # the pipeline's own encoder
    elif encoder is None:
        encoder = published.backbone
    presets = preset_names(pipe.presets, published.dataset, published.backbone)
    active = load_pipeline(name, preset=presets).active_deviations()
    return ReproduceRow(name, published, encoder, tuple(d.what for d in active))


def find_row(pipeline: str, dataset: str, backbone: str | None = None) -> ReproduceRow:
    """The published row of ``pipeline`` on ``dataset`` (and ``backbone`` when several)."""
    found = [r for r in rows([pipeline]) if r.published.dataset == dataset]
    if backbone is not None:
        found = [r for r in found if r.published.backbone == backbone]
    if len(found) > 1:
        own = load_pipeline(pipeline).encoder
        default = [r for r in found if r.encoder is None and own is not None]
        found = default or found
    if len(found) == 1:
        return found[0]
    listed = sorted({(r.published.dataset, r.published.backbone) for r in rows([pipeline])})
    valid = ", ".join(f"{d} {b}" for d, b in listed) or "none"
    wanted = f"{dataset} {backbone}" if backbone else dataset
    what = "several rows; give --backbone" if found else "no published row"
    raise ConfigError(f"pipeline {pipeline!r} has {what} for {wanted}; published rows: {valid}")


def reproduce_table() -> str:
    """``docs/reproduce.md``: one row per pipeline x dataset x backbone."""
    lines = [
        "# Reproducing the papers",
        "",
        "Generated from the pipeline files (`published:`, presets and `deviations:`) by",
        "`python -m cir.cli pipelines reproduce-table > docs/reproduce.md`; do not edit by hand.",
        "",
        "Each row is a paper's own number for a setting a pipeline's presets reproduce, the",
        "command that runs it (`DATA` is the benchmark's folder; `cir bench reproduce PIPELINE",
        "DATASET --backbone B --data-root DATA` runs the same command, `--dry-run` prints it),",
        "and the deviations from the paper that remain in that run. CIRCO and CIRR numbers are",
        "from their test servers: the run writes the submission files to upload. The last column",
        "is for the number cir measures (empty until a GPU run fills it).",
        "",
        "| pipeline | dataset | backbone | paper | source | command | deviations | cir measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows():
        p = row.published
        numbers = ", ".join(f"{k} {v:g}" for k, v in p.metrics.items())
        deviations = "; ".join(row.deviations) if row.deviations else "none"
        note = f" ({p.note})" if p.note else ""
        cells = [row.pipeline, f"{p.dataset} {p.split}", p.backbone, numbers, p.source + note]
        cells += [f"`{shlex.join(row.command())}`", deviations, ""]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
