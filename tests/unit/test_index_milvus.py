"""The Milvus backend on milvus-lite (a local file): export, search with rescoring, checks."""

import pytest
import torch

from cir.errors import DataError
from cir.index import GalleryIndex
from cir.index.milvus import MilvusSearcher, export_milvus, split_credentials, split_spec
from cir.redaction import redact
from cir.testing.galleries import clustered_queries, clustered_rows

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

N, D = 5000, 32


@pytest.fixture(scope="module")
def gallery():
    rows = clustered_rows(N, D, centres=50, seed=11)
    return GalleryIndex.from_embeddings([f"m{i}" for i in range(N)], rows, normalize=False)


@pytest.fixture(scope="module")
def lite(gallery, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("milvus") / "gallery.db")
    assert export_milvus(gallery, uri) == N
    return uri


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "FLAT"])
def test_milvus_lite_finds_the_exact_neighbours(gallery, tmp_path, index_type):
    uri = str(tmp_path / "g.db")
    export_milvus(gallery, uri, "photos", index_type=index_type)
    q = clustered_queries(gallery.embeddings, 30, seed=2)
    exact = gallery.search(q, k=10, exclude=[{"m1"}] * 30)
    searcher = MilvusSearcher.connect(gallery, uri, "photos", nprobe=16, rescore=60)
    found = GalleryIndex.search(_with(gallery, searcher), q, k=10, exclude=[{"m1"}] * 30)
    hits = sum(len(set(a.ids) & set(b.ids)) for a, b in zip(exact, found, strict=True))
    assert hits / 300 >= 0.95 and all("m1" not in r.ids for r in found)
    top = found[0]
    want = gallery.embeddings[[gallery.position(i) for i in top.ids]].float() @ q[0]
    torch.testing.assert_close(torch.tensor(top.scores), want, atol=1e-5, rtol=0)
    scores, ids = searcher.search(q[:2], 3)
    assert scores.shape == (2, 3) and len(ids[1]) == 3
    assert torch.equal(
        searcher.fetch(ids[0]), gallery.embeddings[[gallery.position(i) for i in ids[0]]].float()
    )


def _with(gallery, searcher):
    gallery.backend = searcher
    return gallery


def test_backend_spec_through_the_index(gallery, lite):
    gallery.use_backend(f"milvus:{lite}", rescore=50)
    try:
        assert gallery.approximate.startswith(f"milvus {lite}#cir_gallery")
        assert len(gallery.search(torch.randn(D), k=5)[0]) == 5
    finally:
        gallery.backend = None


def test_existing_missing_and_foreign_collections_are_refused(gallery, lite, tmp_path):
    with pytest.raises(DataError, match="--replace"):
        export_milvus(gallery, lite)
    with pytest.raises(DataError, match="cir index export-milvus"):
        MilvusSearcher.connect(gallery, lite, "nothing_here")
    other = GalleryIndex.from_embeddings([f"o{i}" for i in range(N)], torch.randn(N, D))
    with pytest.raises(DataError, match="not this gallery"):
        MilvusSearcher.connect(other, lite)
    smaller = GalleryIndex.from_embeddings(gallery.ids[:100], gallery.embeddings[:100])
    with pytest.raises(DataError, match="not this gallery"):
        MilvusSearcher.connect(smaller, lite)


def test_credentials_never_reach_a_message():
    uri, token = split_credentials("https://root:Sup3rSecretPw@milvus.example.org:19530/db?x=1")
    assert uri == "https://milvus.example.org:19530/db" and token == "root:Sup3rSecretPw"
    assert "Sup3rSecretPw" not in redact(f"failed: {token} at https://{token}@host")
    assert split_spec("milvus:./g.db#photos") == ("./g.db", "photos")
    assert split_spec("milvus:http://h:19530") == ("http://h:19530", "cir_gallery")
