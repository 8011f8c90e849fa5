"""Readers of the official CIRCO, CIRR and FashionIQ layouts.

Example:
    >>> from cir.bench.datasets import get_dataset
    >>> ds = get_dataset("fashioniq", "/data/fashioniq", text_rule="join")
    >>> [part.name for part in ds.parts("val")]
    ['dress', 'shirt', 'toptee']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cir.bench.datasets.base import BenchDataset, Part, Protocol
from cir.bench.datasets.circo import CIRCO
from cir.bench.datasets.cirr import CIRR
from cir.bench.datasets.fashioniq import FashionIQ
from cir.errors import ConfigError

DATASETS: dict[str, type[BenchDataset]] = {"circo": CIRCO, "cirr": CIRR, "fashioniq": FashionIQ}


def get_dataset(name: str, data_root: str | Path, **options: Any) -> BenchDataset:
    """The reader called ``name`` (circo, cirr, fashioniq) over ``data_root``.

    Options: ``image_root``, ``text_rule`` and, for FashionIQ, ``categories``.
    """
    try:
        cls = DATASETS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown benchmark {name!r}; valid: {', '.join(DATASETS)}") from None
    return cls(data_root, **options)


__all__ = [
    "CIRCO",
    "CIRR",
    "DATASETS",
    "BenchDataset",
    "FashionIQ",
    "Part",
    "Protocol",
    "get_dataset",
]
