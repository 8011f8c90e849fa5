"""Calibration of the compute paths: each timed on a small synthetic gallery, paths taking turns.

See ``cir.index.compute`` for how the timings choose a path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from cir.index.compute import PROBES

PROBE_VALUES = 1 << 23  # rows x dim of the calibration gallery: 16 MiB in 2-byte types

Measure = Callable[[str, int, int], float]
"""``measure(path, queries, rows) -> seconds`` of one search of ``queries`` over ``rows`` rows."""


def calibrate(
    paths: tuple[str, ...],
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    measure: Measure | None = None,
) -> dict[str, list[list[float]]]:
    """Per path and probe, seconds per query as ``[fixed, per gallery row]``.

    Each path is timed over ``PROBE_VALUES / dim`` rows (half of them for the largest probe)
    and over a quarter of those: the difference gives the cost of a row, the rest is the cost
    that does not grow with the gallery (rescoring candidates, building rankings), so the choice
    holds for galleries much larger than the probe. The paths take turns, round after round
    (3 rounds up to 16 queries, 2 beyond), and each keeps its best round, so a burst of load
    from other processes does not favour one of them.
    """
    base = max(4096, PROBE_VALUES // dim)
    measure = measure or SyntheticSearches(base, dim, dtype, device)
    timings: dict[str, list[list[float]]] = {p: [] for p in paths}
    for q in PROBES:
        rows = base if q < PROBES[-1] else base // 2
        full = {p: math.inf for p in paths}
        quarter = dict(full)
        for _ in range(3 if q <= 16 else 2):
            for p in paths:
                full[p] = min(full[p], measure(p, q, rows))
                quarter[p] = min(quarter[p], measure(p, q, rows // 4))
        for p in paths:
            per_row = max(0.0, (full[p] - quarter[p]) / (rows - rows // 4))
            fixed = max(0.0, quarter[p] - per_row * (rows // 4))
            timings[p].append([fixed / q, per_row / q])
    return timings


class SyntheticSearches:
    """Times real searches over a synthetic gallery (CLIP-like: unit rows around a shared
    direction); the default :data:`Measure`. Each (path, queries) is first warmed up on an
    eighth of the rows (kernel selection, first-touch allocations)."""

    def __init__(self, rows: int, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        common = torch.randn(dim, generator=g)
        common = common / common.norm() * dim**0.5
        x = torch.randn(rows, dim, generator=g) + common
        q = torch.randn(PROBES[-1], dim, generator=g) + common
        self.gallery = torch.nn.functional.normalize(x, dim=1).to(device, dtype)
        self.queries = torch.nn.functional.normalize(q, dim=1).to(device)
        self.device = device
        self.searches: dict[tuple[str, int], Callable] = {}
        self.warm: set[tuple[str, int]] = set()

    def __call__(self, path: str, queries: int, rows: int) -> float:
        if (path, queries) not in self.warm:
            self._run(path, queries, max(1, rows // 8))
            self.warm.add((path, queries))
        return self._run(path, queries, rows)

    def _run(self, path: str, queries: int, rows: int) -> float:
        from cir.index.search import QueryMasks

        if (path, rows) not in self.searches:
            self.searches[(path, rows)] = _path_search(path, self.gallery[:rows])
        q = self.queries[:queries]
        _sync(self.device)
        start = time.perf_counter()
        self.searches[(path, rows)](q, QueryMasks.none(len(q)))
        _sync(self.device)
        return time.perf_counter() - start


def _path_search(path: str, gallery: torch.Tensor) -> Callable:
    from cir.index.paths import product_topk

    if path == "faiss":
        from cir.index.faiss_backend import RowsSearcher

        searcher = RowsSearcher(gallery)
        return lambda q, masks: searcher.search(q, 50, masks)
    return lambda q, masks: product_topk(gallery, q, 50, masks, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
