"""The ``Searcher`` protocol: nearest gallery rows of query vectors, and the rows of ids.

Three backends answer it: :class:`ExactSearcher` (the index's exact search), the faiss IVF-PQ
index (:class:`cir.index.ann.IvfPqSearcher`) and a Milvus collection
(:class:`cir.index.milvus.MilvusSearcher`). The approximate two return candidates that are
rescored exactly from the index's stored rows, so their scores are exact inner products; only
which rows are found is approximate.

A ``GalleryIndex`` searches through one with :meth:`GalleryIndex.use_backend`; every ranking it
makes then goes through the backend (see ``docs/scale.md``).

Example:
    >>> searcher = IvfPqSearcher.load(index)
    >>> scores, ids = searcher.search(queries, k=10)
    >>> rows = searcher.fetch(ids[0])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from cir.index.search import QueryMasks

if TYPE_CHECKING:
    from cir.index.gallery import GalleryIndex


@runtime_checkable
class Searcher(Protocol):
    """What every search backend offers."""

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, list[list[str]]]:
        """Top-``k`` ``(scores (Q, k), ids per query)`` of normalised queries, best first."""
        ...

    def fetch(self, ids: list[str]) -> torch.Tensor:
        """The stored rows of ``ids`` as float32 (len(ids), D)."""
        ...


class PositionSearcher:
    """Base of the backends over a ``GalleryIndex``: :meth:`search_positions` finds rows, the
    protocol's ``search``/``fetch`` speak ids.

    Subclasses set ``gallery`` and ``name`` and implement :meth:`search_positions`.
    """

    gallery: GalleryIndex
    name: str = ""
    approximate: bool = True

    def search_positions(
        self, queries: torch.Tensor, k: int, masks: QueryMasks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, positions)`` (Q, k), best first; missing results are -inf at -1."""
        raise NotImplementedError

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, list[list[str]]]:
        q = torch.nn.functional.normalize(queries.float().reshape(-1, queries.shape[-1]), dim=1)
        scores, positions = self.search_positions(q, k, QueryMasks.none(len(q)))
        ids = [self.gallery._ids.take([p for p in row if p >= 0]) for row in positions.tolist()]
        return scores, ids

    def fetch(self, ids: list[str]) -> torch.Tensor:
        rows = torch.tensor([self.gallery.position(i) for i in ids], dtype=torch.long)
        return self.gallery.embeddings[rows.to(self.gallery.device)].float()

    def describe(self) -> str:
        """One line for traces and manifests (no credential in it)."""
        return self.name


class ExactSearcher(PositionSearcher):
    """The index's own exact search behind the protocol (the reference for the others).

    Example:
        >>> ExactSearcher(index).search(q, k=10)
    """

    approximate = False

    def __init__(self, gallery: GalleryIndex) -> None:
        self.gallery = gallery
        self.name = "exact"

    def search_positions(self, queries, k, masks):
        from cir.index.paths import product_topk

        path = self.gallery.compute_plan.path_for(len(queries), avoid=("faiss",))
        return product_topk(self.gallery.embeddings, queries, k, masks, path)
