"""Search through faiss: over the index's own rows (the ``faiss`` compute path) or over a float32
copy (``GalleryIndex.use_faiss``: exact ``flat`` or approximate ``ivf``)."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cir.errors import ConfigError
from cir.index.search import QueryMasks
from cir.index.topk import RunningTopK

_NEG_INF = float("-inf")
GPU_MAX_K = 2048  # the largest k faiss's GPU selection supports
SCAN_MAX_QUERIES = 16
"""Below this many queries faiss scans the codes, decoding in registers; from here on it runs
BLAS products over chunks of rows converted to float32, with its heaps selecting the top k."""
SPLIT_MIN_ROWS = 2048
"""A single query's scan is split over row ranges of at least this many rows, one per thread."""


def import_faiss():
    """Import faiss with its small-batch pitfall fixed.

    faiss compares ``distance_compute_blas_threshold`` with the number of queries; below it a
    scalar loop runs that is ~10x slower than BLAS at CLIP dimensions. A low threshold keeps
    every batch on BLAS.
    """
    try:
        import faiss
    except ImportError as exc:
        raise ConfigError(
            "the faiss backend needs faiss: pip install 'cir[faiss-cpu]' (or 'cir[faiss-gpu]')"
        ) from exc
    faiss.cvar.distance_compute_blas_threshold = 1
    return faiss


def faiss_gpus() -> int:
    """GPUs faiss can use (0 without faiss or with a CPU-only build)."""
    try:
        faiss = import_faiss()
    except ConfigError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class RowsSearcher:
    """faiss's exhaustive inner-product search over the stored rows, without a second copy.

    On the CPU the rows move into the code buffer of a faiss index (fp16 and bf16 rows are the
    codes of a scalar quantizer of that type, fp32 rows those of a flat index) and :attr:`rows`
    is a tensor view of that buffer, which the index keeps as its embeddings. On CUDA, faiss's
    brute-force k-NN reads the rows where they are, with the queries rounded to the rows' type.
    Over 2-byte rows faiss's scores are not all exact (its bf16 quantizer rounds), so the best
    ``k + margin`` are rescored exactly in float32, as on the other 2-byte paths.

    Args:
        storage: (N, D) stored rows (on the CPU they move into faiss's buffer).
        scan_threads: threads that share a single query's scan (default: faiss's OpenMP threads).
        split_min_rows: the fewest rows a thread scans.

    Example:
        >>> searcher = RowsSearcher(storage)
        >>> scores, positions = searcher.search(queries, 50, QueryMasks.none(len(queries)))
    """

    def __init__(
        self,
        storage: torch.Tensor,
        scan_threads: int | None = None,
        split_min_rows: int = SPLIT_MIN_ROWS,
    ) -> None:
        self.faiss = import_faiss()
        if storage.device.type == "cuda":
            import faiss.contrib.torch_utils  # noqa: F401  (knn_gpu then reads torch tensors)

            self.index, self.rows = None, storage
            self.resources = self.faiss.StandardGpuResources()
        else:
            self.index, self.rows = _adopt(self.faiss, storage)
        self.scan_threads = scan_threads or self.faiss.omp_get_max_threads()
        self.split_min_rows = split_min_rows
        self._split: list[tuple] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def search(
        self, queries: torch.Tensor, k: int, masks: QueryMasks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ``(scores, positions)`` as :func:`cir.index.search.chunked_topk` returns them.

        Restrictions are not supported (the index takes another path for them).
        """
        from cir.index.paths import margin, product_topk, rescore

        n, extra = self.rows.shape[0], masks.most_excluded()
        if self.index is not None and len(queries) >= SCAN_MAX_QUERIES:  # exact products
            v, p = finish(*self._blas_search(queries, min(n, k + extra)), masks, n)
            return v[:, :k], p[:, :k]
        # the scan and the GPU round: widen, then rescore 2-byte rows exactly
        two_bytes = self.rows.dtype != torch.float32
        dtype_path = "bf16" if self.rows.dtype == torch.bfloat16 else "fp16"
        wide = min(n, k + (margin(dtype_path, k) if two_bytes else 0))
        asked = min(n, wide + extra)
        if self.index is not None:
            q = queries.detach().float().cpu().contiguous().numpy()
            scores, pos = self._scan(q, asked)
        elif asked > GPU_MAX_K:
            return product_topk(self.rows, queries, k, masks, "fp32")
        else:
            low = queries.to(self.rows.dtype).contiguous()
            metric = self.faiss.METRIC_INNER_PRODUCT
            scores, pos = self.faiss.knn_gpu(self.resources, low, self.rows, asked, metric=metric)
        v, p = finish(scores.float(), pos.long(), masks, n)
        if not two_bytes:
            return v[:, :k], p[:, :k]
        return rescore(queries, self.rows, p[:, :wide].to(self.rows.device), k)

    def _scan(self, q: np.ndarray, asked: int) -> tuple[torch.Tensor, torch.Tensor]:
        """faiss's scan of the codes. faiss gives each query one thread, so a single query is
        split over row ranges scanned side by side (faiss releases the GIL while it searches)."""
        ranges = self._ranges() if len(q) == 1 else []
        if len(ranges) < 2:
            return tuple(torch.from_numpy(a) for a in self.index.search(q, asked))
        found = list(self._pool.map(lambda r: self.index.search(q, asked, params=r[0]), ranges))
        return tuple(torch.from_numpy(np.concatenate(a, axis=1)) for a in zip(*found, strict=True))

    def _ranges(self) -> list[tuple]:
        """Search parameters selecting consecutive row ranges, one per thread (built once)."""
        if self._split is None:
            n = self.index.ntotal
            count = max(1, min(self.scan_threads, n // self.split_min_rows))
            bounds = [n * i // count for i in range(count + 1)]
            self._split = [self._range(lo, hi) for lo, hi in itertools.pairwise(bounds)]
            self._pool = ThreadPoolExecutor(count, thread_name_prefix="cir-faiss-scan")
        return self._split

    def _range(self, lo: int, hi: int) -> tuple:
        selector = self.faiss.IDSelectorRange(lo, hi)
        params = self.faiss.SearchParameters()
        params.sel = selector
        return params, selector  # the parameters do not keep their selector alive

    def _blas_search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """faiss's BLAS k-NN over chunks of the rows converted to float32 in one buffer."""
        from cir.index.paths import BUFFER_VALUES, RowView

        (n, d), ptr = self.rows.shape, self.faiss.swig_ptr
        step = max(1024, BUFFER_VALUES // d)
        view = RowView(self.rows, torch.float32, step)
        q = queries.detach().float().cpu().contiguous()
        best = RunningTopK(k)
        for start in range(0, n, step):
            chunk = view(start, min(start + step, n))
            kk = min(k, len(chunk))
            scores, pos = torch.empty(len(q), kk), torch.empty(len(q), kk, dtype=torch.long)
            self.faiss.knn_inner_product(
                ptr(q.numpy()), ptr(chunk.numpy()), d, len(q), len(chunk), kk,
                ptr(scores.numpy()), ptr(pos.numpy()),
            )  # fmt: skip
            best.merge(scores, pos + start)
        return best.values, best.positions


def _adopt(faiss, storage: torch.Tensor):
    """A faiss flat-codes index whose codes are the rows, and a tensor view of those codes."""
    n, d = storage.shape
    if storage.dtype == torch.float32:
        index = faiss.IndexFlatIP(d)
    else:
        qtype = {torch.float16: "QT_fp16", torch.bfloat16: "QT_bf16"}[storage.dtype]
        quantizer = getattr(faiss.ScalarQuantizer, qtype)
        index = faiss.IndexScalarQuantizer(d, quantizer, faiss.METRIC_INNER_PRODUCT)
    nbytes = n * d * storage.element_size()
    if index.code_size * n != nbytes:
        raise RuntimeError(f"faiss codes of {index.code_size} bytes do not match rows of {d}")
    index.codes.resize(nbytes)
    rows = torch.from_numpy(np.asarray(_Codes(faiss, index, nbytes)))
    rows = rows.view(storage.dtype).view(n, d)
    rows.copy_(storage)
    index.ntotal = n
    return index, rows


class _Codes:
    """The code buffer of a faiss index as an array; keeps the index alive while viewed."""

    def __init__(self, faiss, index, nbytes: int) -> None:
        self.index = index
        array = faiss.rev_swig_ptr(index.codes.data(), nbytes)
        self.__array_interface__ = array.__array_interface__


def finish(
    scores: torch.Tensor, positions: torch.Tensor, masks: QueryMasks, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop excluded and padded (-1) results of a faiss search; -inf and -1 mark non-results."""
    gone = positions < 0
    if masks.excl_q.numel():
        rows = torch.arange(len(positions), device=positions.device).unsqueeze(1)
        dropped = (masks.excl_q * n + masks.excl_p).to(positions.device)
        gone |= torch.isin(rows * n + positions, dropped)
    scores = scores.masked_fill(gone, _NEG_INF)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    positions = positions.gather(1, order).masked_fill(torch.isneginf(scores), -1)
    return scores, positions


class FaissSearcher:
    """A faiss index over a float32 copy of the gallery's embeddings (faiss's own layouts).

    Args:
        embeddings: (N, D) gallery rows, L2-normalised.
        kind: ``flat`` (exact) or ``ivf`` (approximate, for very large galleries).
        nlist: IVF lists (default about 4 * sqrt(N)).
        nprobe: IVF lists visited per query.
        gpu: move the faiss index to the GPUs (default: when faiss sees one).

    Example:
        >>> idx.use_faiss("ivf", nprobe=32).search(q, k=50)
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        gpu: bool | None = None,
    ) -> None:
        faiss = import_faiss()
        x = embeddings.detach().float().cpu().contiguous().numpy()
        n, d = x.shape
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            lists = nlist or max(1, min(n // 39, int(4 * n**0.5)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = nprobe
        else:
            raise ConfigError(f"unknown faiss index kind {kind!r}; valid: flat, ivf")
        index.add(x)
        use_gpu = faiss_gpus() > 0 if gpu is None else gpu
        self.index = faiss.index_cpu_to_all_gpus(index) if use_gpu else index
        self.kind = kind
        self.size = n

    def search(
        self, queries: torch.Tensor, k: int, masks: QueryMasks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores, positions), widened to cover each query's exclusions then filtered."""
        wide = min(self.size, k + masks.most_excluded())
        q = queries.detach().float().cpu().contiguous().numpy()
        scores, pos = self.index.search(q, wide)
        v, p = finish(torch.from_numpy(scores), torch.from_numpy(pos).long(), masks, self.size)
        return v[:, :k], p[:, :k]
