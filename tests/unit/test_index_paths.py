"""Every compute path, forced, ranks exactly like float32 products with the stored rows."""

from __future__ import annotations

import random

import pytest
import torch

from cir.errors import ConfigError
from cir.index import GalleryIndex
from cir.index.compute import PATHS
from cir.index.paths import default_chunk_rows, margin, product_topk, rescore
from cir.index.search import ProductScores, QueryMasks

N, D = 3000, 64


def _index(dtype: str, compute: str, n: int = N, shared: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(D, generator=g)
    x = torch.randn(n, D, generator=g) + shared * common / common.norm() * D**0.5
    idx = GalleryIndex.from_embeddings([f"r{i}" for i in range(n)], x, dtype=dtype, compute=compute)
    return idx, idx.embeddings.float().clone()


def _queries(q: int, shared: float = 0.0, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(D, generator=torch.Generator().manual_seed(0))
    x = torch.randn(q, D, generator=g) + shared * common / common.norm() * D**0.5
    return torch.nn.functional.normalize(x, dim=1)


def _expected(rows: torch.Tensor, q: torch.Tensor, k: int, drop=None, keep=None):
    scores = q @ rows.T
    for qi in range(len(q)):
        for p in range(len(rows)):
            name = f"r{p}"
            if (drop and drop[qi] and name in drop[qi]) or (
                keep and keep[qi] is not None and name not in keep[qi]
            ):
                scores[qi, p] = float("-inf")
    v, p = torch.topk(scores, min(k, len(rows)), dim=1)
    return [
        [(f"r{j}", s) for j, s in zip(pi.tolist(), vi.tolist(), strict=True) if s != float("-inf")]
        for pi, vi in zip(p, v, strict=True)
    ]


def _assert_exact(rankings, expected):
    for r, e in zip(rankings, expected, strict=True):
        assert list(r.ids) == [i for i, _ in e]
        assert r.scores == pytest.approx([s for _, s in e], abs=2e-6)
        assert len(set(r.ids)) == len(r.ids)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_forced_path_ranks_by_exact_products_of_stored_rows(path, dtype):
    idx, rows = _index(dtype, path)
    assert idx.compute_plan.source == "forced" and idx.compute_plan.path_for(7) == path
    for q in (_queries(1), _queries(23, seed=2)):
        _assert_exact(idx.search(q, k=40), _expected(rows, q, 40))


@pytest.mark.parametrize("path", PATHS)
def test_forced_path_keeps_exclusions_restrictions_and_short_results(path):
    idx, rows = _index("fp16", path, n=700)
    q = _queries(5)
    rng = random.Random(4)
    ids = idx.ids
    drop = [set(rng.sample(ids, 80)), None, {ids[3]}, set(), set(rng.sample(ids, 699))]
    keep = [None, set(rng.sample(ids, 9)), None, set(rng.sample(ids, 200)), None]
    got = idx.search(q, k=30, exclude=drop, restrict=keep)
    _assert_exact(got, _expected(rows, q, 30, drop, keep))
    assert len(got[1]) == 9 and len(got[4]) == 1
    got = idx.search(q, k=30, exclude=drop)
    _assert_exact(got, _expected(rows, q, 30, drop))
    everything = idx.search(q[:2], k=5000)
    assert all(sorted(r.ids) == sorted(ids) for r in everything)


@pytest.mark.parametrize("path", PATHS)
def test_topk_with_product_scores_takes_the_path_and_equals_search(path):
    idx, rows = _index("fp16", path)
    q = _queries(6)
    via_topk = idx.topk(ProductScores(q), len(q), k=25, exclude=[["r1"]] * 6)
    via_search = idx.search(q, k=25, exclude=[["r1"]] * 6)
    assert [r.ids for r in via_topk] == [r.ids for r in via_search]
    _assert_exact(via_topk, _expected(rows, q, 25, [{"r1"}] * 6))


@pytest.mark.parametrize("path", ["fp16", "bf16"])
def test_two_byte_products_with_rescoring_agree_on_clip_like_near_ties(path):
    """Rows around a shared direction (mean cosine about 0.5) crowd the k-th score."""
    idx, rows = _index("fp16", path, n=20000, shared=1.0)
    q = _queries(16, shared=1.0)
    exact = _expected(rows, q, 50)
    got = idx.search(q, k=50)
    hits = sum(len(set(r.ids) & {i for i, _ in e}) for r, e in zip(got, exact, strict=True))
    assert hits / (16 * 50) >= 0.995
    for qi, r in enumerate(got):  # whatever was found carries its exact score
        found = torch.tensor([int(i[1:]) for i in r.ids])
        assert r.scores == pytest.approx((rows[found] @ q[qi]).tolist(), abs=2e-6)


def test_faiss_path_shares_the_rows_instead_of_copying_them():
    idx, rows = _index("fp16", "faiss")
    before = idx.embeddings
    idx.search(_queries(2), k=5)
    searcher = idx._rows_searcher
    assert idx.embeddings is searcher.rows and idx.embeddings is not before
    assert torch.equal(idx.embeddings.float(), rows)
    codes = searcher.faiss.rev_swig_ptr(searcher.index.codes.data(), 1)
    assert codes.__array_interface__["data"][0] == idx.embeddings.data_ptr()
    idx.add(["extra"], torch.randn(1, D))  # the faiss copy is dropped, then rebuilt on use
    assert idx._rows_searcher is None
    r = idx.search(idx.embedding("extra"), k=1)[0]
    assert r.ids == ("extra",)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_faiss_scan_of_one_query_split_over_threads_is_exact(dtype):
    """faiss scans a query on one thread; cir splits a single query's rows over several."""
    from cir.index.faiss_backend import RowsSearcher

    idx, rows = _index(dtype, "fp32", n=2500)
    searcher = RowsSearcher(idx.embeddings.clone(), scan_threads=3, split_min_rows=500)
    q = _queries(1, shared=1.0)
    best = (q @ rows.T).argmax(1)
    v, p = searcher.search(q, 40, QueryMasks.from_rows(best))
    assert len(searcher._ranges()) == 3
    want = _expected(rows, q, 40, drop=[{f"r{int(best)}"}])
    assert [f"r{j}" for j in p[0].tolist()] == [i for i, _ in want[0]]
    assert v[0].tolist() == pytest.approx([s for _, s in want[0]], abs=2e-6)


def test_chunking_does_not_change_the_result():
    idx, rows = _index("fp16", "fp32")
    q = _queries(4)
    want = _expected(rows, q, 33)
    for path in ("fp32", "fp16", "bf16"):
        for chunk, step in ((100, None), (1024, None), (5000, None), (1000, 96), (2048, 700)):
            v, p = product_topk(idx.embeddings, q, 33, QueryMasks.none(4), path, chunk, step)
            got = [
                [(f"r{j}", s) for j, s in zip(pi, vi, strict=True)]
                for pi, vi in zip(p.tolist(), v.tolist(), strict=True)
            ]
            for g, e in zip(got, want, strict=True):
                assert [i for i, _ in g] == [i for i, _ in e]


@pytest.mark.parametrize("path", ["fp32", "bf16"])
def test_blocks_of_converted_steps_keep_exclusions(path):
    """Converting paths multiply in small steps into one block; excluded rows stay out."""
    idx, rows = _index("fp16", "fp32")
    q = _queries(6, shared=1.0)
    best = q @ rows.T
    excluded = best.argmax(1)  # each query's best row, in a different step of the block
    masks = QueryMasks.from_rows(excluded)
    v, p = product_topk(idx.embeddings, q, 20, masks, path, chunk_rows=1000, step_rows=96)
    assert not (p == excluded[:, None]).any()
    best[torch.arange(6), excluded] = float("-inf")
    want_v, want_p = torch.topk(best, 20, dim=1)
    assert torch.equal(p, want_p)
    torch.testing.assert_close(v, want_v, atol=2e-6, rtol=0)


@pytest.mark.parametrize("path", ["fp32", "bf16"])
def test_blocks_skip_steps_without_allowed_rows(path):
    from cir.index.search import build_masks

    idx, rows = _index("fp16", "fp32")
    q = _queries(3)
    allowed = [{"r5", "r2500"}, {"r7"}, {"r2999", "r1200"}]
    masks = build_masks(3, None, allowed, idx._ids)
    v, p = product_topk(idx.embeddings, q, 5, masks, path, chunk_rows=1000, step_rows=96)
    for qi, names in enumerate(allowed):
        found = [f"r{j}" for j in p[qi].tolist() if j >= 0]
        assert sorted(found) == sorted(names)
        want = sorted(((q[qi] @ rows[int(n[1:])]).item() for n in names), reverse=True)
        assert v[qi, : len(names)].tolist() == pytest.approx(want, abs=2e-6)


def test_rescore_keeps_missing_candidates_missing():
    rows = torch.randn(10, D, generator=torch.Generator().manual_seed(3))
    rows = torch.nn.functional.normalize(rows, dim=1).half()
    q = _queries(2)
    pos = torch.tensor([[3, -1, 7, -1], [-1, -1, -1, -1]])
    v, p = rescore(q, rows, pos, k=3)
    assert p.tolist()[1] == [-1, -1, -1] and torch.isneginf(v[1]).all()
    assert sorted(p[0, :2].tolist()) == [3, 7] and p[0, 2] == -1
    best = max(float(rows[3].float() @ q[0]), float(rows[7].float() @ q[0]))
    assert float(v[0, 0]) == pytest.approx(best, abs=1e-6)


def test_margins_and_chunk_sizes_are_bounded():
    assert margin("fp16", 50) == 25 and margin("fp16", 1) == 16 and margin("bf16", 50) == 50
    assert default_chunk_rows(1, 10**6, 768, converts=False) == 10**6
    assert default_chunk_rows(1, 10**6, 768, converts=True) * 768 <= 1 << 22
    assert default_chunk_rows(1000, 10**6, 768, converts=False) * 1000 <= 1 << 23
    assert default_chunk_rows(10**6, 500, 768, converts=True) == 500


@pytest.mark.gpu
@pytest.mark.parametrize("path", PATHS)
def test_cuda_paths_rank_like_the_cpu(path):
    if not torch.cuda.is_available():
        pytest.fail("--run-gpu given but CUDA is not available")
    if path == "faiss":
        from cir.index.faiss_backend import faiss_gpus

        if faiss_gpus() == 0:
            pytest.skip("faiss has no GPU support here (install faiss-gpu)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    ids = [f"r{i}" for i in range(N)]
    gpu = GalleryIndex.from_embeddings(ids, x, device="cuda", compute=path)
    rows = gpu.embeddings.float().cpu()
    q = _queries(9)
    _assert_exact(
        gpu.search(q.cuda(), k=40, exclude=[["r0"]] * 9), _expected(rows, q, 40, [{"r0"}] * 9)
    )


@pytest.mark.parametrize("path", PATHS)
def test_many_queries_with_exclusions(path):
    """From 16 queries on, faiss runs BLAS over converted chunks instead of its scan."""
    idx, rows = _index("fp16", path, n=2500)
    q = _queries(20, seed=5)
    drop = [{f"r{i}" for i in range(j, 2500, 7)} if j % 2 else None for j in range(20)]
    _assert_exact(idx.search(q, k=15, exclude=drop), _expected(rows, q, 15, drop))


def test_saved_index_chooses_at_load_and_can_be_forced(tmp_path):
    idx, _ = _index("fp16", "auto", n=50)
    idx.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx", compute="bf16")
    assert loaded.compute_plan.source == "forced" and loaded.compute_plan.path_for(3) == "bf16"
    assert loaded.set_compute("auto").source == "small gallery"
    with pytest.raises(ConfigError, match="valid: auto, fp32"):
        GalleryIndex.load(tmp_path / "idx", compute="fast")


def test_the_dot_rule_scores_are_products_the_index_can_dispatch():
    from cir.stages.retrieve.rules import RuleInputs, make_rule

    class State:
        def __init__(self) -> None:
            self.embeddings = {"q": torch.ones(D)}

    score_fn = make_rule("dot").build(RuleInputs([State()], "q", None, lambda i: None))
    assert isinstance(score_fn, ProductScores)
    rows = torch.randn(5, D)
    torch.testing.assert_close(score_fn(0, 5, rows), torch.ones(1, D) @ rows.T)


@pytest.mark.parametrize("path", PATHS)
def test_large_clip_like_gallery_with_exclusions_on_every_path(path):
    idx, rows = _index("fp16", path, n=12000, shared=1.0)
    q = _queries(40, shared=1.0, seed=6)
    drop = [{f"r{j}" for j in range(i, 12000, 97)} for i in range(40)]
    want = _expected(rows, q, 30, drop)
    got = idx.search(q, k=30, exclude=drop)
    hits = sum(len(set(r.ids) & {i for i, _ in e}) for r, e in zip(got, want, strict=True))
    assert hits == 40 * 30 if path in ("fp32", "faiss") else hits >= 0.995 * 40 * 30
    assert all(not set(r.ids) & d for r, d in zip(got, drop, strict=True))
