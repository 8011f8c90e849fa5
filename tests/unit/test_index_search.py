"""GalleryIndex.search / topk against brute force: exclude, restrict, k, duplicates, encoders."""

from __future__ import annotations

import random

import pytest
import torch

from cir.errors import DataError, EncoderMismatchError
from cir.index import GalleryIndex

N, D = 700, 48


def _gallery(dtype: str = "fp32", n: int = N, seed: int = 0) -> tuple[GalleryIndex, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    idx = GalleryIndex.from_embeddings([f"img{i:04d}" for i in range(n)], x, dtype=dtype)
    return idx, idx.embeddings.float()


def _queries(q: int, seed: int = 1) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(q, D, generator=torch.Generator().manual_seed(seed)), dim=1
    )


def _brute(x: torch.Tensor, ids: list[str], q: torch.Tensor, k: int, drop=None, keep=None):
    """Full sort of every score: the reference the chunked search must match."""
    out = []
    scores = q @ x.T
    for qi in range(len(q)):
        cand = [
            (float(scores[qi, p]), ids[p])
            for p in range(len(ids))
            if (drop is None or drop[qi] is None or ids[p] not in drop[qi])
            and (keep is None or keep[qi] is None or ids[p] in keep[qi])
        ]
        cand.sort(key=lambda t: -t[0])
        out.append(cand[:k])
    return out


def _assert_matches(rankings, expected, tol=1e-5):
    assert len(rankings) == len(expected)
    for r, e in zip(rankings, expected, strict=True):
        assert list(r.ids) == [i for _, i in e]
        assert r.scores == pytest.approx([s for s, _ in e], abs=tol)
        assert len(set(r.ids)) == len(r.ids)


@pytest.mark.parametrize("chunk_rows", [None, 64, 1000])
def test_search_equals_brute_force_across_chunkings(chunk_rows):
    idx, x = _gallery("fp32")
    q = _queries(9)
    got = idx.topk(lambda a, b, g: q @ g.T, len(q), k=20, chunk_rows=chunk_rows)
    _assert_matches(got, _brute(x, idx.ids, q, 20))
    _assert_matches(idx.search(q, k=20), _brute(x, idx.ids, q, 20))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_two_byte_storage_search_ranks_by_exact_scores_of_stored_rows(dtype):
    idx, x = _gallery(dtype)
    q = _queries(12)
    expected = _brute(x, idx.ids, q, 25)
    _assert_matches(idx.search(q, k=25), expected, tol=1e-4)


def test_exclude_and_restrict_follow_brute_force():
    idx, x = _gallery("fp16")
    q = _queries(6)
    rng = random.Random(3)
    ids = idx.ids
    drop = [set(rng.sample(ids, 40)), None, {ids[0]}, set(), set(rng.sample(ids, 5)), None]
    keep = [None, set(rng.sample(ids, 7)), None, set(rng.sample(ids, 60)), set(ids[:3]), None]
    got = idx.search(q, k=30, exclude=drop, restrict=keep)
    _assert_matches(got, _brute(x, ids, q, 30, drop, keep), tol=1e-4)
    assert len(got[1]) == 7 and len(got[4]) == 3  # k larger than the candidates: all of them


def test_exclude_the_top_hit_promotes_the_next_one():
    idx, _ = _gallery("fp32")
    q = _queries(1)
    first = idx.search(q, k=3)[0]
    again = idx.search(q, k=3, exclude=[[first.ids[0]]])[0]
    assert again.ids[:2] == first.ids[1:]
    assert first.ids[0] not in again.ids


def test_k_larger_than_gallery_returns_every_id_once():
    idx, _ = _gallery("fp16", n=37)
    r = idx.search(_queries(2), k=500)
    assert all(sorted(x.ids) == sorted(idx.ids) for x in r)
    assert all(list(x.scores) == sorted(x.scores, reverse=True) for x in r)


def test_restrict_to_nothing_gives_empty_rankings():
    idx, _ = _gallery("fp32", n=50)
    r = idx.search(_queries(2), k=5, restrict=[[], []])
    assert [len(x) for x in r] == [0, 0]


def test_restrict_with_unknown_id_is_an_error_naming_it():
    idx, _ = _gallery(n=20)
    with pytest.raises(DataError, match="nope"):
        idx.search(_queries(1), k=5, restrict=[["img0001", "nope"]])


def test_exclude_with_unknown_id_is_ignored():
    idx, _ = _gallery(n=20)
    q = _queries(1)
    assert idx.search(q, k=5, exclude=[["nope"]]) == idx.search(q, k=5)


@pytest.mark.parametrize("bad", [[["a"]], "img0001", [["x"], ["y"], ["z"]]])
def test_exclude_must_give_one_collection_per_query(bad):
    idx, _ = _gallery(n=20)
    with pytest.raises(DataError, match=r"per query|string"):
        idx.search(_queries(2), k=5, exclude=bad)


def test_topk_hands_score_fn_bounds_for_slicing_sidecars():
    idx, x = _gallery("fp16", n=300)
    side = torch.randn(300, 4)
    idx.set_sidecar("extra", side)
    q = _queries(3)
    seen = []

    def score(a, b, g):
        seen.append((a, b))
        assert g.dtype == torch.float32 and g.shape == (b - a, D)
        assert torch.equal(g, idx.embeddings[a:b].float())
        return q @ g.T + idx.sidecar("extra")[0][a:b, 0]

    got = idx.topk(score, 3, k=10, chunk_rows=128)
    assert seen == [(0, 128), (128, 256), (256, 300)]
    full = q @ x.T + side[:, 0]
    for qi, r in enumerate(got):
        top = torch.topk(full[qi], 10).indices.tolist()
        assert list(r.ids) == [idx.ids[p] for p in top]


def test_topk_rejects_wrong_score_shape():
    idx, _ = _gallery(n=30)
    with pytest.raises(ValueError, match="expected"):
        idx.topk(lambda a, b, g: torch.zeros(2, b - a + 1), 2, k=3)


def test_search_normalises_queries_and_accepts_one_vector():
    idx, x = _gallery("fp32")
    q = _queries(1)[0]
    r = idx.search(q * 7.0, k=5)
    _assert_matches(r, _brute(x, idx.ids, q[None], 5))


def test_query_dimension_mismatch_is_refused():
    idx, _ = _gallery(n=10)
    with pytest.raises(EncoderMismatchError, match="48-d"):
        idx.search(torch.randn(2, D + 1))


def test_mismatched_encoder_is_refused_unless_allowed():
    from cir.models import EncoderIdentity

    built = EncoderIdentity("open_clip", "ViT-B-32", "openai", "ViT-B-32/openai", dim=D)
    other = EncoderIdentity("open_clip", "ViT-L-14", "openai", "ViT-L-14/openai", dim=D)
    idx = GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, D), encoder=built)
    q = torch.randn(1, D)
    with pytest.raises(EncoderMismatchError) as err:
        idx.search(q, encoder=other)
    assert built.key in str(err.value) and other.key in str(err.value)
    with pytest.raises(EncoderMismatchError):
        idx.search(q, encoder=other.key)
    assert len(idx.search(q, encoder=other, allow_mismatch=True)[0]) == 2
    assert len(idx.search(q, encoder=built)[0]) == 2


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k_is_refused(k):
    idx, _ = _gallery(n=10)
    with pytest.raises(DataError, match="k must be"):
        idx.search(_queries(1), k=k)


def test_faiss_flat_matches_exact_search_with_exclusions():
    pytest.importorskip("faiss")
    idx, _ = _gallery("fp32")
    q = _queries(5)
    drop = [[f"img{i:04d}" for i in range(0, 600, 3)], None, None, ["img0001"], None]
    exact = idx.search(q, k=15, exclude=drop)
    idx.use_faiss("flat")
    got = idx.search(q, k=15, exclude=drop)
    for a, b in zip(got, exact, strict=True):
        assert a.ids == b.ids
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_faiss_ivf_with_every_list_probed_is_exact():
    pytest.importorskip("faiss")
    idx, _ = _gallery("fp32")
    q = _queries(4)
    exact = idx.search(q, k=10)
    idx.use_faiss("ivf", nlist=8, nprobe=8)
    assert [r.ids for r in idx.search(q, k=10)] == [r.ids for r in exact]


def test_gallery_sorted_by_score_takes_the_fallback_and_stays_exact():
    q = _queries(2)
    g = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(2000, D, generator=g), dim=1)
    x = x[torch.argsort(x @ q[0])]  # every chunk beats the previous one for query 0
    idx = GalleryIndex.from_embeddings([f"s{i}" for i in range(2000)], x, dtype="fp32")
    got = idx.topk(lambda a, b, gal: q @ gal.T, 2, k=40, chunk_rows=100)
    _assert_matches(got, _brute(idx.embeddings.float(), idx.ids, q, 40))


def test_identical_rows_never_give_duplicate_ids():
    x = torch.randn(1, D).repeat(300, 1)
    idx = GalleryIndex.from_embeddings([f"d{i}" for i in range(300)], x)
    for r in idx.search(_queries(3), k=120) + idx.topk(lambda a, b, g: g[:3] @ g.T, 3, k=120):
        assert len(r) == 120 and len(set(r.ids)) == 120
