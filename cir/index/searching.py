"""Search methods of ``GalleryIndex``: exact top-k on the machine's fastest compute path."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from cir.errors import DataError, EncoderMismatchError
from cir.index.checks import check_k, identity_dict
from cir.index.compute import CALIBRATE_FROM, ComputePlan, check_compute, resolve_plan
from cir.index.paths import generic_topk, product_topk
from cir.index.search import IdSets, ProductScores, ScoreFn, build_masks
from cir.types import Ranking


class SearchMixin:
    """``search``, ``topk`` and the compute plan, over the attributes ``GalleryIndex`` keeps:
    ``_emb`` (stored rows), ``_ids``, ``_device``, ``_encoder``, ``_compute``, ``_plan``,
    ``_rows_searcher``, ``faiss``, ``backend`` and ``folder``."""

    def check_encoder(self, encoder: Any, allow_mismatch: bool = False) -> None:
        """Refuse embeddings made by another encoder than the index's (unless allowed)."""
        if encoder is None or self._encoder is None or allow_mismatch:
            return
        key = encoder if isinstance(encoder, str) else identity_dict(encoder)["key"]
        if key != self._encoder["key"]:
            raise EncoderMismatchError(
                f"the queries were encoded with {key!r} but the index was built with "
                f"{self._encoder['key']!r}; use the index's model for the queries, rebuild "
                "the index with the query model, or pass allow_mismatch=True"
            )

    @property
    def compute_plan(self) -> ComputePlan:
        """How searches multiply on this machine: the path of each batch size, and why.

        Chosen from the hardware's features and a short calibration cached per machine (see
        ``cir.index.compute``), or forced with ``compute=`` / :meth:`set_compute`.
        """
        if self._plan is None or self._plan[0] != self._plan_key():
            self._plan = (self._plan_key(), self._resolve_plan())
        return self._plan[1]

    def set_compute(self, compute: str = "auto", recalibrate: bool = False) -> ComputePlan:
        """Force a compute path (``fp32``, ``fp16``, ``bf16``, ``faiss``) or go back to ``auto``.

        With ``recalibrate``, ``auto`` times the paths again and updates the machine's cache.
        """
        self._compute = check_compute(compute)
        if recalibrate:
            self._plan = (self._plan_key(), self._resolve_plan(recalibrate=True))
        return self.compute_plan

    def _plan_key(self) -> tuple:
        large = len(self) * self.dim >= CALIBRATE_FROM
        return (self._compute, self._emb.dtype, self.dim, self._device, large)

    def _resolve_plan(self, recalibrate: bool = False) -> ComputePlan:
        n, dtype = len(self), self._emb.dtype
        return resolve_plan(
            dtype, self.dim, n, self._device, self._compute, recalibrate=recalibrate
        )

    def topk(
        self,
        score_fn: ScoreFn,
        num_queries: int,
        k: int = 50,
        exclude: IdSets = None,
        restrict: IdSets = None,
        chunk_rows: int | None = None,
    ) -> list[Ranking]:
        """Rank the gallery with any scoring rule, chunk by chunk, keeping the top ``k``.

        Args:
            score_fn: ``score_fn(start, stop, gallery_chunk) -> Tensor(num_queries, stop-start)``;
                ``gallery_chunk`` is rows ``[start, stop)`` of the embeddings as float32 on
                :attr:`device`; use the bounds to slice sidecars. Return -inf to drop an entry.
                A :class:`~cir.index.search.ProductScores` runs on the machine's fastest
                compute path (:attr:`compute_plan`), like :meth:`search`.
            num_queries: Q.
            k: entries per ranking (all candidates when fewer).
            exclude: per query, ids to leave out (or None).
            restrict: per query, the only ids to rank (or None for the whole gallery).
            chunk_rows: rows per chunk (default depends on Q and the compute path).

        Example:
            >>> idx.topk(lambda a, b, g: q @ g.T, num_queries=len(q), k=10)
        """
        check_k(k)
        masks = build_masks(num_queries, exclude, restrict, self._ids)
        if len(self) == 0:
            return [Ranking((), ()) for _ in range(num_queries)]
        if not isinstance(score_fn, ProductScores):
            v, p = generic_topk(self._emb, score_fn, num_queries, k, masks, chunk_rows)
            return self._rankings(v, p)
        queries = score_fn.queries.to(self._device)
        if len(queries) != num_queries:
            raise ValueError(f"ProductScores holds {len(queries)} queries, not {num_queries}")
        path = self.compute_plan.path_for(num_queries, avoid=("faiss",) if restrict else ())
        if self.backend is not None and not restrict:
            v, p = self.backend.search_positions(queries, k, masks)
        elif path == "faiss":
            v, p = self._faiss_rows().search(queries, k, masks)
        else:
            v, p = product_topk(self._emb, queries, k, masks, path, chunk_rows)
        return self._rankings(v, p)

    def _faiss_rows(self):
        """The faiss path's searcher; on the CPU the embeddings then live in its buffer."""
        from cir.index.faiss_backend import RowsSearcher

        if self._rows_searcher is None or self._rows_searcher.rows is not self._emb:
            self._rows_searcher = RowsSearcher(self._emb)
            self._emb = self._rows_searcher.rows
        return self._rows_searcher

    def search(
        self,
        queries: torch.Tensor,
        k: int = 50,
        exclude: IdSets = None,
        restrict: IdSets = None,
        encoder: Any = None,
        allow_mismatch: bool = False,
    ) -> list[Ranking]:
        """Rank the gallery by cosine similarity to each query (exact, or faiss when enabled).

        Exact search runs on the machine's fastest compute path (:attr:`compute_plan`); every
        path ranks by exact float32 products with the stored rows.

        Args:
            queries: (Q, D) or (D,) embeddings (normalised here).
            k: entries per ranking (all candidates when fewer).
            exclude: per query, ids to leave out (CIRR drops the reference image).
            restrict: per query, the only ids to rank (CIRR's subset recall).
            encoder: identity (or key) of the encoder that made ``queries``.
            allow_mismatch: search even when ``encoder`` differs from the index's.

        Raises:
            EncoderMismatchError: ``encoder`` is not the index's encoder.
        """
        self.check_encoder(encoder, allow_mismatch)
        q = self._queries(queries)
        check_k(k)
        if self.backend is not None and restrict is None:
            masks = build_masks(len(q), exclude, None, self._ids)
            v, p = self.backend.search_positions(q, k, masks)
            return self._rankings(v, p)
        if self.faiss is not None and restrict is None:
            v, p = self.faiss.search(q, k, build_masks(len(q), exclude, None, self._ids))
            return self._rankings(v, p)
        return self.topk(ProductScores(q), len(q), k, exclude, restrict)

    def _queries(self, queries: torch.Tensor) -> torch.Tensor:
        if not isinstance(queries, torch.Tensor):
            raise DataError(f"queries must be a tensor (Q, {self.dim}), got {type(queries)}")
        q = queries.unsqueeze(0) if queries.ndim == 1 else queries
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise EncoderMismatchError(
                f"queries have shape {tuple(queries.shape)} but the index holds {self.dim}-d "
                f"embeddings (encoder {self.encoder_key!r}); encode queries with the same model"
            )
        q = q.detach().to(self._device, torch.float32)
        return torch.nn.functional.normalize(q, dim=1)

    def _rankings(self, values: torch.Tensor, positions: torch.Tensor) -> list[Ranking]:
        """Rankings from driver output; -inf entries (position -1) are not results."""
        found = (positions >= 0).sum(dim=1).tolist()  # results come first, padding last
        ids = iter(self._ids.take(positions[positions >= 0].tolist()))
        out = []
        for v, count in zip(values.float().cpu().tolist(), found, strict=True):
            out.append(Ranking(tuple(itertools.islice(ids, count)), tuple(v[:count])))
        return out

    def use_faiss(self, kind: str = "flat", **options: Any) -> SearchMixin:
        """Search through faiss (``flat`` exact, or ``ivf`` approximate); returns self.

        Searches with ``restrict`` still use the exact search; add/remove drop the faiss index.
        """
        from cir.index.faiss_backend import FaissSearcher

        self.faiss = FaissSearcher(self._emb, kind, **options)
        return self

    def use_backend(self, spec: str = "exact", **options: Any) -> SearchMixin:
        """Search through a backend: ``exact`` (the default), ``ivfpq`` (the IVF-PQ index saved
        in the index folder, see ``cir index ann``) or ``milvus:URI[#collection]`` (a collection
        written by ``cir index export-milvus``); returns self.

        Options go to the backend (``nprobe``, ``rescore``). Searches with ``restrict`` stay
        exact; rules that score whole galleries run on the backend's candidates (see
        :func:`cir.index.candidates.candidate_view`).
        """
        from cir.index.backends import open_backend

        self.backend = open_backend(self, spec, **options)
        return self

    @property
    def approximate(self) -> str | None:
        """What an approximate backend in use is (for traces and manifests), else None."""
        if self.backend is not None and self.backend.approximate:
            return self.backend.describe()
        if self.faiss is not None and self.faiss.kind != "flat":
            return f"faiss {self.faiss.kind}"
        return None
