"""Building an index from embeddings and editing it: ids, add/remove, sidecars, bad input."""

from __future__ import annotations

import pytest
import torch

from cir.errors import DataError
from cir.index import GalleryIndex


def _index(n: int = 5, d: int = 8) -> GalleryIndex:
    return GalleryIndex.from_embeddings([f"i{k}" for k in range(n)], torch.randn(n, d))


def test_from_embeddings_normalises_and_stores_fp16():
    x = torch.randn(4, 8) * 5
    idx = GalleryIndex.from_embeddings(["a", "b", "c", "d"], x)
    assert idx.embeddings.dtype == torch.float16 and len(idx) == 4 and idx.dim == 8
    norms = idx.embeddings.float().norm(dim=1)
    assert torch.allclose(norms, torch.ones(4), atol=1e-3)
    assert torch.allclose(idx.embedding("c"), torch.nn.functional.normalize(x[2], dim=0), atol=1e-3)
    assert idx.embedding("c").dtype == torch.float32
    assert idx.position("d") == 3 and idx.has("a") and not idx.has("z")
    assert idx.path("a") is None and idx.root is None and idx.encoder is None


def test_duplicate_ids_are_refused_by_name():
    with pytest.raises(DataError, match=r"duplicate.*'b'"):
        GalleryIndex.from_embeddings(["a", "b", "b"], torch.randn(3, 4))
    idx = _index()
    with pytest.raises(DataError, match=r"already in the index.*'i2'"):
        idx.add(["new", "i2"], torch.randn(2, 8))
    assert len(idx) == 5


@pytest.mark.parametrize(
    ("ids", "emb", "match"),
    [
        (["a", "b"], torch.randn(3, 4), "N = 2"),
        (["a"], torch.randn(4), "N = 1"),
        ("ab", torch.randn(2, 4), "single string"),
        (["a", ""], torch.randn(2, 4), "non-empty"),
        (["a", 3], torch.randn(2, 4), "non-empty strings"),
        (["a", "b"], torch.tensor([[1.0, float("nan")], [1.0, 0.0]]), "NaN.*'a'"),
    ],
)
def test_bad_embeddings_or_ids_are_clear_errors(ids, emb, match):
    with pytest.raises(DataError, match=match):
        GalleryIndex.from_embeddings(ids, emb)


def test_unknown_dtype_lists_valid_ones():
    with pytest.raises(DataError, match="fp16, bf16, fp32"):
        GalleryIndex.from_embeddings(["a"], torch.randn(1, 4), dtype="int8")


def test_add_then_remove_keeps_rows_paths_and_sidecars_aligned():
    idx = GalleryIndex.from_embeddings(["a", "b", "c"], torch.randn(3, 4), paths=["/a", "/b", "/c"])
    side = torch.arange(3.0).reshape(3, 1)
    idx.set_sidecar("n", side, {"kind": "rank"}, {"label": ["A", "B", "C"]})
    new = torch.randn(2, 4)
    idx.add(
        ["d", "e"],
        new,
        paths=["/d", "/e"],
        sidecars={"n": (torch.tensor([[3.0], [4.0]]), {"label": ["D", "E"]})},
    )
    assert idx.ids == ["a", "b", "c", "d", "e"] and idx.position("e") == 4
    assert torch.allclose(
        idx.embedding("e"), torch.nn.functional.normalize(new[1], dim=0), atol=1e-3
    )
    before = {i: idx.embedding(i) for i in idx.ids}
    idx.remove(["b", "d"])
    assert idx.ids == ["a", "c", "e"] and idx.position("e") == 2
    assert all(torch.equal(idx.embedding(i), before[i]) for i in idx.ids)
    assert idx.path("e").as_posix() == "/e"
    t, meta = idx.sidecar("n")
    assert t.flatten().tolist() == [0.0, 2.0, 4.0] and meta == {
        "kind": "rank",
        "label": ["A", "C", "E"],
    }
    q = idx.embedding("c")[None]
    assert idx.search(q, k=1)[0].ids == ("c",)


def test_add_requires_every_sidecar_and_the_right_dimension():
    idx = _index()
    idx.set_sidecar("s", torch.zeros(5, 2))
    with pytest.raises(DataError, match="missing: \\['s'\\]"):
        idx.add(["x"], torch.randn(1, 8))
    with pytest.raises(DataError, match="expected \\(1, 2\\)"):
        idx.add(["x"], torch.randn(1, 8), sidecars={"s": torch.zeros(1, 3)})
    with pytest.raises(DataError, match="9-d but the index holds 8-d"):
        idx.add(["x"], torch.randn(1, 9), sidecars={"s": torch.zeros(1, 2)})
    assert len(idx) == 5 and idx.sidecar("s")[0].shape == (5, 2)


def test_remove_unknown_ids_is_an_error_and_removes_nothing():
    idx = _index()
    with pytest.raises(DataError, match="'zz'"):
        idx.remove(["i1", "zz"])
    assert len(idx) == 5


def test_unknown_id_lookups_name_the_id():
    idx = _index()
    with pytest.raises(DataError, match="'nope' is not in the index"):
        idx.position("nope")
    with pytest.raises(DataError, match="no sidecar 'x'"):
        idx.sidecar("x")


def test_sidecar_rows_must_match_the_gallery():
    idx = _index()
    with pytest.raises(DataError, match="needs 5 rows"):
        idx.set_sidecar("s", torch.zeros(4, 2))
    with pytest.raises(DataError, match="5 entries"):
        idx.set_sidecar("s", torch.zeros(5, 2), rows={"text": ["a"]})
    assert idx.sidecars == []
