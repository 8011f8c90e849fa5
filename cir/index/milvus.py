"""Search a gallery through Milvus: milvus-lite (a local ``.db`` file) or a Milvus cluster.

``export_milvus`` writes the gallery's rows into a collection (primary key: the row position,
vector: the stored row as float32); ``MilvusSearcher`` searches it with pymilvus and rescores the
best ``rescore`` hits exactly from the index's stored rows, like the IVF-PQ backend. The same
code serves a local file (``milvus:./gallery.db``) and a cluster (``milvus:http://host:19530``).

Credentials never leave the client: a URI's ``user:password@`` part becomes the client's token
(or set ``CIR_MILVUS_TOKEN``), and every message shows the URI without it.

Example:
    >>> export_milvus(index, "./gallery.db")
    >>> index.use_backend("milvus:./gallery.db#cir_gallery").search(q, k=10)
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch

from cir.errors import ConfigError, DataError
from cir.index.faiss_backend import finish
from cir.index.paths import rescore
from cir.index.search import QueryMasks
from cir.index.searchers import PositionSearcher
from cir.redaction import redact, register_secret

DEFAULT_COLLECTION = "cir_gallery"
TOKEN_ENV = "CIR_MILVUS_TOKEN"
INSERT_ROWS = 4096
MAX_LIMIT = 16384  # Milvus's largest top-k
CHECKED_ROWS = 8


def split_spec(spec: str) -> tuple[str, str]:
    """``milvus:URI[#collection]`` -> ``(URI, collection)``."""
    uri, _, collection = spec.removeprefix("milvus:").partition("#")
    if not uri:
        raise ConfigError("give the Milvus URI: milvus:./gallery.db or milvus:http://host:19530")
    return uri, collection or DEFAULT_COLLECTION


def split_credentials(uri: str) -> tuple[str, str]:
    """``(URI without user info or query, the user info as a token)``."""
    parts = urlsplit(uri)
    if not parts.scheme or "@" not in parts.netloc:
        return uri, ""
    userinfo, host = parts.netloc.rsplit("@", 1)
    register_secret(userinfo)
    return urlunsplit((parts.scheme, host, parts.path, "", "")), userinfo


def connect(uri: str) -> tuple[Any, str]:
    """A ``MilvusClient`` for ``uri`` and the URI as it may be shown (without credentials)."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise ConfigError("the Milvus backend needs pymilvus: pip install 'cir[milvus]'") from exc
    uri, token = split_credentials(uri)
    token = os.environ.get(TOKEN_ENV, "") or token
    register_secret(token)
    shown = redact(uri)
    try:
        client = MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
    except Exception as exc:  # pymilvus raises its own error types
        raise DataError(f"cannot connect to Milvus at {shown}: {redact(str(exc))[:300]}") from None
    return client, shown


def export_milvus(
    gallery: Any,
    uri: str,
    collection: str = DEFAULT_COLLECTION,
    index_type: str = "IVF_FLAT",
    replace: bool = False,
) -> int:
    """Write the gallery's rows into a new collection; returns the rows written.

    Args:
        gallery: a ``GalleryIndex``.
        uri: a milvus-lite file (``./gallery.db``) or a cluster (``http://host:19530``).
        collection: the collection's name.
        index_type: Milvus's vector index (``IVF_FLAT``, ``FLAT``; on a cluster also ``HNSW``,
            ``IVF_PQ``, ...); searched by inner product.
        replace: drop a collection of that name first (otherwise an existing one is refused).
    """
    from pymilvus import DataType, MilvusClient

    client, shown = connect(uri)
    if client.has_collection(collection):
        if not replace:
            raise DataError(
                f"Milvus at {shown} already has a collection {collection!r}; pick another "
                "--collection or pass --replace to drop it"
            )
        client.drop_collection(collection)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pos", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=gallery.dim)
    params = client.prepare_index_params()
    nlist = {"nlist": max(1, min(65536, int(4 * len(gallery) ** 0.5)))}
    extra = nlist if index_type.startswith("IVF") else {}
    params.add_index(field_name="vec", index_type=index_type, metric_type="IP", params=extra)
    client.create_collection(collection, schema=schema, index_params=params)
    rows = gallery.embeddings
    for start in range(0, len(gallery), INSERT_ROWS):
        block = rows[start : start + INSERT_ROWS].float().cpu().numpy()
        client.insert(collection, [{"pos": start + i, "vec": v} for i, v in enumerate(block)])
    client.flush(collection)  # seal the segments, so searches use the vector index
    return len(gallery)


class MilvusSearcher(PositionSearcher):
    """A gallery's Milvus collection as a search backend, with exact rescoring.

    Example:
        >>> MilvusSearcher.connect(index, "./gallery.db").search(q, k=10)
    """

    def __init__(self, gallery, client, shown: str, collection: str, nprobe: int, rescore: int):
        if nprobe < 1 or rescore < 1:
            raise ConfigError(f"nprobe and rescore must be >= 1, got {nprobe} and {rescore}")
        self.gallery, self.client, self.collection = gallery, client, collection
        self.nprobe, self.rescore = nprobe, rescore
        self.name = f"milvus {shown}#{collection} nprobe={nprobe} rescore={rescore}"

    @classmethod
    def connect(
        cls,
        gallery: Any,
        uri: str,
        collection: str = DEFAULT_COLLECTION,
        nprobe: int = 32,
        rescore: int = 256,
    ) -> MilvusSearcher:
        """Open ``collection`` at ``uri`` and check that it holds this gallery's rows."""
        client, shown = connect(uri)
        if not client.has_collection(collection):
            raise DataError(
                f"Milvus at {shown} has no collection {collection!r}; write it with "
                f"`cir index export-milvus INDEX --uri URI --collection {collection}`"
            )
        client.load_collection(collection)
        searcher = cls(gallery, client, shown, collection, nprobe, rescore)
        searcher._check_rows()
        return searcher

    def _check_rows(self) -> None:
        count = int(self.client.get_collection_stats(self.collection)["row_count"])
        n = len(self.gallery)
        picks = sorted({int(p) for p in np.linspace(0, n - 1, min(n, CHECKED_ROWS))}) if n else []
        found = self.client.query(
            self.collection, filter=f"pos in {picks}", output_fields=["pos", "vec"]
        )
        stored = {int(r["pos"]): np.asarray(r["vec"], dtype=np.float32) for r in found}
        mine = self.gallery.embeddings
        same = count == n and all(
            p in stored and np.allclose(stored[p], mine[p].float().cpu().numpy(), atol=1e-3)
            for p in picks
        )
        if not same:
            raise DataError(
                f"{self.describe()} holds {count} rows that are not this gallery's "
                f"({n} rows); export the index again with --replace"
            )

    def search_positions(
        self, queries: torch.Tensor, k: int, masks: QueryMasks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.gallery)
        wide = min(n, max(k, self.rescore))
        asked = min(n, wide + masks.most_excluded(), MAX_LIMIT)
        q = queries.detach().float().cpu().numpy()
        hits = self.client.search(
            self.collection,
            data=list(q),
            limit=asked,
            search_params={"metric_type": "IP", "params": {"nprobe": self.nprobe}},
            output_fields=["pos"],
            consistency_level="Bounded",  # the rows are written once, before any search
        )
        pos = torch.full((len(q), asked), -1, dtype=torch.long)
        for i, row in enumerate(hits):
            got = [int(h["pos"]) for h in row]
            pos[i, : len(got)] = torch.tensor(got, dtype=torch.long)
        scores = torch.zeros(pos.shape).masked_fill(pos < 0, float("-inf"))
        _, pos = finish(scores, pos, masks, n)
        rows = self.gallery.embeddings
        return rescore(queries.to(rows.device), rows, pos[:, :wide].to(rows.device), k)
