"""Readers of the official CIRCO, CIRR, FashionIQ, GeneCIS, i-CIR and ZeroSight layouts.

Example:
    >>> from cir.bench.datasets import get_dataset
    >>> ds = get_dataset("fashioniq", "/data/fashioniq", text_rule="join")
    >>> [part.name for part in ds.parts("val")]
    ['dress', 'shirt', 'toptee']
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from cir.bench.datasets.base import BenchDataset, Part, Protocol
from cir.bench.datasets.circo import CIRCO
from cir.bench.datasets.cirr import CIRR
from cir.bench.datasets.fashioniq import FashionIQ
from cir.bench.datasets.genecis import GeneCIS
from cir.bench.datasets.icir import ICIR
from cir.bench.datasets.zerosight import ZeroSight
from cir.errors import ConfigError

DATASETS: dict[str, type[BenchDataset]] = {
    "circo": CIRCO,
    "cirr": CIRR,
    "fashioniq": FashionIQ,
    "genecis": GeneCIS,
    "icir": ICIR,
    "zerosight": ZeroSight,
}


def get_dataset(name: str, data_root: str | Path, **options: Any) -> BenchDataset:
    """The reader called ``name`` (circo, cirr, fashioniq, genecis, icir, zerosight) over
    ``data_root``.

    Options: ``image_root``, ``text_rule``; FashionIQ ``categories``; GeneCIS ``tasks`` and
    ``crop_root``; ZeroSight ``queries_file``.
    """
    try:
        cls = DATASETS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown benchmark {name!r}; valid: {', '.join(DATASETS)}") from None
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "data_root"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"{cls.name} has no option {', '.join(unknown)}; its options: {', '.join(accepted)}"
        )
    return cls(data_root, **options)


__all__ = [
    "CIRCO",
    "CIRR",
    "DATASETS",
    "ICIR",
    "BenchDataset",
    "FashionIQ",
    "GeneCIS",
    "Part",
    "Protocol",
    "ZeroSight",
    "get_dataset",
]
