"""A pipeline file's ``published:`` section: the paper's own numbers per benchmark and backbone.

Each row names the benchmark, the CLIP backbone and the source of the numbers; its metric names
are exactly those ``cir bench run`` writes for that benchmark, so a measured run and the paper
line up in ``docs/reproduce.md``::

    published:
      - {dataset: circo, backbone: ViT-L-14, source: "paper Table 1",
         metrics: {mAP@5: 23.35, mAP@10: 24.03}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cir.errors import ConfigError

_METRIC_NAMES = {
    "circo": r"(mAP|Recall)@\d+",
    "cirr": r"(Recall|Recall_subset)@\d+",
    "fashioniq": r"(dress|shirt|toptee|average)/Recall@\d+",
    "genecis": r"[a-z_]+/Recall@\d+",
    "icir": r"(mAP|macro_mAP|min_mAP)",
    "zerosight": r"[A-Za-z_/]+@\d+",
}
"""The metric names ``cir bench run`` writes, per benchmark (see :mod:`cir.bench.metrics`)."""
_DEFAULT_SPLIT = {"circo": "test", "cirr": "test"}
_PUBLISHED_KEYS = {"dataset", "backbone", "encoder", "split", "source", "metrics", "note"}


@dataclass(frozen=True)
class Published:
    """The paper's own numbers for one benchmark and backbone a pipeline's presets reproduce.

    Attributes:
        dataset / split: the benchmark and split (CIRCO and CIRR: ``test`` by default, the
            papers' evaluation server; others ``val``).
        backbone: the open_clip architecture (``ViT-L-14``), which selects ``@backbone`` presets.
        encoder: the encoder to run (``ViT-L-14/openai``); default: the pipeline's own when its
            backbone matches, else ``backbone``.
        source: where the numbers are printed (``"paper Table 2"``).
        metrics: metric name (as ``cir bench run`` writes it) -> value in percent.
        note: anything a reader must know about the row.

    Example:
        >>> Published("circo", "ViT-L-14", "paper Table 1", {"mAP@5": 23.35})
    """

    dataset: str
    backbone: str
    source: str
    metrics: dict[str, float]
    split: str = "val"
    encoder: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset, "backbone": self.backbone}
        out |= {"split": self.split, "source": self.source, "metrics": dict(self.metrics)}
        if self.encoder:
            out["encoder"] = self.encoder
        if self.note:
            out["note"] = self.note
        return out


def read_published(value: Any) -> tuple[Published, ...]:
    """The checked ``published:`` list (metric names must be those the benchmark reports)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("`published:` must be a list of {dataset, backbone, source, metrics}")
    return tuple(_published_row(i, item) for i, item in enumerate(value))


def _published_row(i: int, item: Any) -> Published:
    where = f"published[{i}]"
    required = {"dataset", "backbone", "source", "metrics"}
    if not isinstance(item, dict) or not required <= set(item) <= _PUBLISHED_KEYS:
        raise ConfigError(
            f"{where} must have dataset, backbone, source and metrics (optionally split, "
            f"encoder, note), got {item!r}"
        )
    dataset = str(item["dataset"])
    if dataset not in _METRIC_NAMES:
        valid = ", ".join(_METRIC_NAMES)
        raise ConfigError(f"{where}: unknown dataset {dataset!r}; valid: {valid}")
    split = str(item.get("split", _DEFAULT_SPLIT.get(dataset, "val")))
    if split not in ("val", "test"):
        raise ConfigError(f"{where}: split must be val or test, got {split!r}")
    metrics = item["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise ConfigError(f"{where}: metrics must map metric names to numbers")
    for name, number in metrics.items():
        if not re.fullmatch(_METRIC_NAMES[dataset], str(name)):
            raise ConfigError(
                f"{where}: {name!r} is not a {dataset} metric of cir bench run "
                f"(names look like {_METRIC_NAMES[dataset]!r})"
            )
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(f"{where}: {name} must be a number (percent), got {number!r}")
    encoder = item.get("encoder")
    return Published(
        dataset, str(item["backbone"]), str(item["source"]),
        {str(k): float(v) for k, v in metrics.items()}, split,
        str(encoder) if encoder else None, str(item.get("note", "")),
    )  # fmt: skip
