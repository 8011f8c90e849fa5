"""Search through faiss: exact inner-product (``flat``) or inverted lists (``ivf``)."""

from __future__ import annotations

import torch

from cir.errors import ConfigError
from cir.index.search import QueryMasks

_NEG_INF = float("-inf")


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


class FaissSearcher:
    """A faiss index over the gallery's embeddings (held as float32, as faiss requires).

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
        use_gpu = (
            gpu
            if gpu is not None
            else faiss.get_num_gpus() > 0
            if hasattr(faiss, "get_num_gpus")
            else False
        )
        self.index = faiss.index_cpu_to_all_gpus(index) if use_gpu else index
        self.kind = kind
        self.size = n

    def search(
        self, queries: torch.Tensor, k: int, masks: QueryMasks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores, positions), widened to cover each query's exclusions then filtered."""
        extra = (
            int(torch.bincount(masks.excl_q, minlength=len(queries)).max())
            if (masks.excl_q.numel())
            else 0
        )
        wide = min(self.size, k + extra)
        q = queries.detach().float().cpu().contiguous().numpy()
        scores, pos = self.index.search(q, wide)
        v = torch.from_numpy(scores)
        p = torch.from_numpy(pos).long()
        v[p < 0] = _NEG_INF  # faiss pads with -1 when fewer results exist
        p = p.clamp(min=0)
        if extra:
            dropped = torch.zeros_like(v, dtype=torch.bool)
            for q_i, pos_i in zip(masks.excl_q.tolist(), masks.excl_p.tolist(), strict=True):
                dropped[q_i] |= p[q_i] == pos_i
            v[dropped] = _NEG_INF
            v, sel = torch.sort(v, dim=1, descending=True, stable=True)
            p = p.gather(1, sel)
        return v[:, :k], p[:, :k]
