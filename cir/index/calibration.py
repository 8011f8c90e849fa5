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

Measure = Callable[[str, int, int, int], float]
"""``measure(path, queries, rows, k) -> seconds`` of one top-``k`` search of ``queries`` over
``rows`` rows."""
K = 50  # results per query the fixed costs are measured for


def calibrate(
    paths: tuple[str, ...],
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    measure: Measure | None = None,
) -> dict[str, list[list[float]]]:
    """Per path and probe, seconds per query as ``[fixed, per gallery row]``.

    The cost of a row comes from top-1 searches over ``PROBE_VALUES / dim`` rows and over a
    quarter of them: with k = 1 the running top-k settles after a few rows, as it does for
    k = 50 in a gallery of millions, so the probe's few thousand rows stand for a large gallery.
    The rest of a top-50 search over the quarter is the cost that does not grow with the
    gallery (sorting the first chunk, rescoring candidates). Paths take turns, round after
    round (3 rounds up to 16 queries, 2 beyond), and each keeps its best round, so a burst of
    load from other processes does not favour one of them.
    """
    base = max(4096, PROBE_VALUES // dim)
    measure = measure or SyntheticSearches(base, dim, dtype, device)
    timings: dict[str, list[list[float]]] = {p: [] for p in paths}
    runs = [(base, 1), (base // 4, 1), (base // 4, K)]
    for q in PROBES:
        best = {(p, run): math.inf for p in paths for run in runs}
        for _ in range(3 if q <= 16 else 2):
            for p in paths:
                for rows, k in runs:
                    best[p, (rows, k)] = min(best[p, (rows, k)], measure(p, q, rows, k))
        for p in paths:
            full, quarter, top = (best[p, run] for run in runs)
            per_row = max(0.0, (full - quarter) / (base - base // 4))
            fixed = max(0.0, top - per_row * (base // 4))
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

    def __call__(self, path: str, queries: int, rows: int, k: int) -> float:
        if (path, queries) not in self.warm:
            self._run(path, queries, max(1, rows // 8), k)
            self.warm.add((path, queries))
        return self._run(path, queries, rows, k)

    def _run(self, path: str, queries: int, rows: int, k: int) -> float:
        from cir.index.search import QueryMasks

        if (path, rows) not in self.searches:
            self.searches[(path, rows)] = _path_search(path, self.gallery[:rows])
        q = self.queries[:queries]
        _sync(self.device)
        start = time.perf_counter()
        self.searches[(path, rows)](q, k, QueryMasks.none(len(q)))
        _sync(self.device)
        return time.perf_counter() - start


def _path_search(path: str, gallery: torch.Tensor) -> Callable:
    from cir.index.paths import product_topk

    if path == "faiss":
        from cir.index.faiss_backend import RowsSearcher

        searcher = RowsSearcher(gallery)
        return lambda q, k, masks: searcher.search(q, k, masks)
    return lambda q, k, masks: product_topk(gallery, q, k, masks, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
