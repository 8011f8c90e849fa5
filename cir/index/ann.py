"""Approximate search past memory: a faiss IVF-PQ index stored beside the gallery's rows.

``build_ivfpq`` sizes the index from a memory budget (:mod:`cir.index.ann_sizing`), trains it
on an even sample of the stored rows, adds the rows in chunks and writes it into the index
folder (``ann-ivfpq.<tag>.faiss`` with ``ann-ivfpq.json``). ``IvfPqSearcher.load`` opens it
memory-mapped (faiss ``IO_FLAG_MMAP``: the inverted lists stay on disk and are paged in on
demand). A search visits ``nprobe`` lists, takes the best ``rescore`` candidates by their PQ
scores and rescores them exactly from the stored fp16 rows, so the returned scores are exact and
the ranking is exact whenever the true top ``k`` are among the candidates.

The index belongs to one saved generation of the gallery: a save of the gallery (add, remove)
makes it stale, and loading a stale one is refused with the command that rebuilds it.

Example:
    >>> build_ivfpq("my_index", max_memory=parse_memory("8GB"))
    >>> index = GalleryIndex.load("my_index").use_backend("ivfpq")
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cir.errors import ConfigError, DataError
from cir.index.ann_sizing import HNSW_LINKS, TRAIN_PER_LIST, IvfPqSizing, size_ivfpq
from cir.index.faiss_backend import finish, import_faiss
from cir.index.folder import FolderLock, claim, read_ledger, record
from cir.index.paths import rescore
from cir.index.search import QueryMasks
from cir.index.searchers import PositionSearcher

if TYPE_CHECKING:
    from cir.index.gallery import GalleryIndex

META = "ann-ivfpq.json"
DEFAULT_NPROBE = 32
DEFAULT_RESCORE = 256
ADD_CHUNK = 65536
TRAIN_MAX_ROWS = 160 * 1024
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
"""Candidates the coarse HNSW search keeps (at least ``nprobe`` are used at search time)."""
KMEANS_ITERATIONS = 10


def generation(manifest: dict[str, Any]) -> str:
    """What ties an approximate index to one saved gallery: its rows file (new on every save)."""
    return f"{manifest['files']['embeddings']}:{manifest['count']}"


def build_ivfpq(
    directory: str | Path,
    max_memory: int,
    opq: bool = False,
    train_rows: int | None = None,
    progress: bool = False,
) -> IvfPqSizing:
    """Build the IVF-PQ index of the saved gallery in ``directory``; returns its shape.

    Args:
        directory: a saved gallery index.
        max_memory: the budget in bytes (see :func:`cir.index.ann_sizing.size_ivfpq`).
        opq: rotate the rows with OPQ before product quantization.
        train_rows: rows sampled for training (default: 39 per list, at least 256 per PQ
            centroid, at most 163,840); the coarse k-means runs 10 iterations.
        progress: print progress to stderr.
    """
    from cir.index import store

    manifest, stored = store.load(directory, mmap=True)
    rows = stored.embeddings
    sizing = size_ivfpq(len(rows), rows.shape[1], max_memory, opq)
    index, _assigner = _new_index(sizing)  # the assigner must outlive the training
    started = time.perf_counter()
    index.train(_training_sample(rows, sizing, train_rows))
    for start in range(0, len(rows), ADD_CHUNK):
        index.add(rows[start : start + ADD_CHUNK].float().numpy())
        if progress:
            print(f"ann: {min(start + ADD_CHUNK, len(rows))}/{len(rows)} rows", flush=True)
    seconds = round(time.perf_counter() - started, 3)
    _write(Path(directory), index, sizing, generation(manifest), seconds)
    return sizing


def _new_index(sizing: IvfPqSizing) -> tuple[Any, Any]:
    """An untrained IVF-PQ index of ``sizing``'s shape, and the exact assigner of its k-means.

    The coarse k-means is spherical (unit centroids) and assigns rows by an exact inner-product
    search: training through an approximate quantizer would let a few centroids capture most
    rows. With unit centroids the nearest by L2 is the nearest by inner product, so the HNSW
    graph over them is an L2 one (faiss's HNSW is built for metrics, not for inner products).
    """
    faiss = import_faiss()
    d = sizing.dim
    quantizer = faiss.IndexHNSWFlat(d, HNSW_LINKS) if sizing.hnsw else faiss.IndexFlatIP(d)
    if sizing.hnsw:
        quantizer.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        quantizer.hnsw.efSearch = HNSW_EF_SEARCH
    ivf = faiss.IndexIVFPQ(
        quantizer, d, sizing.nlist, sizing.m, sizing.nbits, faiss.METRIC_INNER_PRODUCT
    )
    ivf.cp.niter = KMEANS_ITERATIONS
    ivf.cp.spherical = True
    assigner = faiss.IndexFlatIP(d)
    ivf.clustering_index = assigner
    if not sizing.opq:
        return ivf, assigner
    return faiss.IndexPreTransform(faiss.OPQMatrix(d, sizing.m), ivf), assigner


def _training_sample(rows: torch.Tensor, sizing: IvfPqSizing, train_rows: int | None):
    want = train_rows or max(sizing.nlist * TRAIN_PER_LIST, (1 << sizing.nbits) * 256)
    want = min(len(rows), want if train_rows else min(want, TRAIN_MAX_ROWS))
    picks = torch.linspace(0, len(rows) - 1, want).long()
    return np.ascontiguousarray(rows[picks].float().numpy())


def _write(folder: Path, index, sizing: IvfPqSizing, gen: str, seconds: float) -> None:
    faiss = import_faiss()
    with FolderLock(folder, wait=30.0, what="approximate index build"):
        claim(folder)
        old = _read_meta(folder) if (folder / META).is_file() else None
        name = f"ann-ivfpq.{secrets.token_hex(4)}.faiss"
        record(folder, [name, META])
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, folder / name)
        meta = {"file": name, "generation": gen, "sizing": sizing.to_dict(), "seconds": seconds}
        from cir.index.store import write_json

        write_json(folder / META, meta)
        stale = old and old.get("file")
        if stale and stale != name and stale in read_ledger(folder):
            (folder / stale).unlink(missing_ok=True)


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(meta, dict) and isinstance(meta.get("file"), str)
        ok = ok and isinstance(meta.get("sizing"), dict) and "/" not in meta["file"]
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"{path} is not a valid approximate-index description; rebuild it")
    return meta


def _widen_coarse_search(ivf, nprobe: int) -> None:
    """Let an HNSW coarse quantizer keep enough candidates for ``nprobe`` lists."""
    faiss = import_faiss()
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * nprobe)


class IvfPqSearcher(PositionSearcher):
    """Search a gallery through its memory-mapped IVF-PQ index, rescoring exactly.

    Args:
        gallery: the loaded gallery (its stored rows rescore the candidates).
        index: the faiss index.
        meta: the description written with it.
        nprobe: inverted lists visited per query.
        rescore: candidates per query rescored exactly (at least ``k``).

    Example:
        >>> searcher = IvfPqSearcher.load(index, nprobe=64, rescore=500)
        >>> scores, ids = searcher.search(q, k=50)
    """

    def __init__(self, gallery: GalleryIndex, index, meta: dict, nprobe: int, rescore: int):
        if nprobe < 1 or rescore < 1:
            raise ConfigError(f"nprobe and rescore must be >= 1, got {nprobe} and {rescore}")
        self.gallery, self.index, self.meta = gallery, index, meta
        self.nprobe, self.rescore = nprobe, rescore
        ivf = import_faiss().extract_index_ivf(index)
        ivf.nprobe = nprobe
        _widen_coarse_search(ivf, nprobe)
        self.name = f"ivfpq {meta['sizing']['factory']} nprobe={nprobe} rescore={rescore}"

    @classmethod
    def load(
        cls,
        gallery: GalleryIndex,
        directory: str | Path | None = None,
        nprobe: int = DEFAULT_NPROBE,
        rescore: int = DEFAULT_RESCORE,
        mmap: bool = True,
    ) -> IvfPqSearcher:
        """Open the IVF-PQ index of ``gallery`` (saved in ``directory``, default its folder)."""
        from cir.index.store import read_manifest

        if directory is None and gallery.folder is None:
            raise DataError(
                "this index was never saved, so it has no approximate index; save it, then run "
                "`cir index ann FOLDER --max-index-memory ...`"
            )
        folder = Path(directory or gallery.folder)
        if not (folder / META).is_file():
            raise DataError(
                f"{folder} has no approximate index; build one with "
                f"`cir index ann {folder} --max-index-memory 8GB`"
            )
        meta = _read_meta(folder)
        if meta.get("generation") != generation(read_manifest(folder)):
            raise DataError(
                f"the approximate index in {folder} was built for an earlier version of the "
                f"gallery; rebuild it with `cir index ann {folder} --max-index-memory ...`"
            )
        faiss = import_faiss()
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(folder / meta["file"]), flags)
        if index.ntotal != len(gallery) or index.d != gallery.dim:
            raise DataError(f"{folder / meta['file']} does not match the gallery; rebuild it")
        return cls(gallery, index, meta, nprobe, rescore)

    def search_positions(
        self, queries: torch.Tensor, k: int, masks: QueryMasks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.gallery)
        wide = min(n, max(k, self.rescore))
        asked = min(n, wide + masks.most_excluded())
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        scores, pos = (torch.from_numpy(a) for a in self.index.search(q, asked))
        _, pos = finish(scores, pos.long(), masks, n)
        rows = self.gallery.embeddings
        return rescore(queries.to(rows.device), rows, pos[:, :wide].to(rows.device), k)
