"""IVF-PQ with exact rescoring: sizing, neighbours, storage, rules on ANN candidates."""

import json

import pytest
import torch

from cir import Query, QueryState
from cir.errors import ConfigError, DataError
from cir.index import GalleryIndex
from cir.index.ann import META, IvfPqSearcher, build_ivfpq
from cir.index.ann_sizing import parse_memory, size_ivfpq
from cir.index.candidates import candidate_view
from cir.index.searchers import ExactSearcher, Searcher
from cir.stages.base import Context
from cir.stages.retrieve import Retrieve
from cir.testing.galleries import clustered_queries, clustered_rows
from cir.types import StageRecord

pytest.importorskip("faiss")

N, D = 6000, 32


@pytest.fixture(scope="module")
def ann_dir(tmp_path_factory):
    rows = clustered_rows(N, D, centres=60, seed=3)
    folder = tmp_path_factory.mktemp("ann") / "gallery"
    idx = GalleryIndex.from_embeddings([f"g{i}" for i in range(N)], rows, normalize=False)
    caps = torch.nn.functional.normalize(
        torch.randn(N, 2, D, generator=torch.Generator().manual_seed(4)), dim=-1
    )
    idx.set_sidecar("captions", (caps * 0.3 + rows.float()[:, None]).half(), {"k": 2})
    idx.save(folder)
    build_ivfpq(folder, max_memory=10**6)
    return folder


def _agreement(a, b):
    return sum(len(set(x.ids) & set(y.ids)) for x, y in zip(a, b, strict=True)) / sum(map(len, a))


@pytest.mark.parametrize(
    "rows,dim,budget", [(2_000_000, 768, "384MB"), (10_000, 64, "400KB"), (100_000_000, 768, "8GB")]
)
def test_sizing_stays_within_the_budget(rows, dim, budget):
    shape = size_ivfpq(rows, dim, parse_memory(budget))
    assert shape.memory <= parse_memory(budget)
    assert dim % shape.m == 0 and dim // shape.m >= 4
    assert shape.nlist & (shape.nlist - 1) == 0 and shape.nlist * 39 <= rows
    bigger = size_ivfpq(rows, dim, parse_memory(budget) * 4)
    assert bigger.m >= shape.m  # more memory never gives a coarser code


def test_sizing_errors_name_the_problem():
    with pytest.raises(ConfigError, match="raise --max-index-memory"):
        size_ivfpq(1_000_000, 768, parse_memory("1MB"))
    with pytest.raises(ConfigError, match=r"e\.g\. 8GB"):
        parse_memory("eight gigs")
    assert parse_memory("1.5GB") == 1_500_000_000 and parse_memory("2GiB") == 2 * 2**30
    assert size_ivfpq(2_000_000, 768, parse_memory("384MB")).factory == "IVF4096,PQ128"
    assert size_ivfpq(100_000_000, 768, parse_memory("20GB")).factory == "IVF32768_HNSW32,PQ128"
    assert size_ivfpq(5000, 64, 10**6, opq=True).factory.startswith("OPQ16,")


def test_the_built_index_stays_within_its_estimate(ann_dir):
    meta = json.loads((ann_dir / META).read_text())
    size = (ann_dir / meta["file"]).stat().st_size
    assert meta["sizing"]["memory_bytes"] <= 10**6  # the budget the fixture gave
    assert size <= 1.1 * meta["sizing"]["memory_bytes"]


def test_lists_are_balanced(ann_dir):
    """Spherical k-means: inner-product assignment must not pour the rows into a few lists."""
    import faiss

    index = GalleryIndex.load(ann_dir).use_backend("ivfpq").backend.index
    assert faiss.extract_index_ivf(index).invlists.imbalance_factor() < 3


@pytest.mark.parametrize("opq", [False, True])
def test_hnsw_coarse_quantizer_assigns_rows_to_their_nearest_list(opq):
    """The graph path (galleries of tens of millions) forced on a small gallery."""
    import faiss

    from cir.index.ann import _new_index
    from cir.index.ann_sizing import IvfPqSizing

    rows = clustered_rows(8000, D, centres=60, seed=9).float().numpy()
    index, _assigner = _new_index(IvfPqSizing(8000, D, 128, 8, 8, opq=opq, hnsw=True))
    index.train(rows)
    index.add(rows)
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    assert isinstance(quantizer, faiss.IndexHNSWFlat) and ivf.nlist == 128
    flat = faiss.IndexFlatIP(D)
    flat.add(quantizer.storage.reconstruct_n(0, 128))
    moved = index.chain.at(0).apply(rows[:2000]) if opq else rows[:2000]
    _, exact = flat.search(moved, 1)
    _, graph = ivf.quantizer.search(moved, 1)
    assert (exact == graph).mean() >= 0.98
    assert ivf.invlists.imbalance_factor() < 3


def test_ivfpq_finds_the_exact_neighbours(ann_dir):
    idx = GalleryIndex.load(ann_dir)
    q = clustered_queries(idx.embeddings, 40, seed=5)
    exact = idx.search(q, k=10)
    idx.use_backend("ivfpq", nprobe=8, rescore=100)
    approx = idx.search(q, k=10)
    assert idx.approximate.startswith("ivfpq IVF")
    assert _agreement(exact, approx) >= 0.9
    for r in approx:  # rescored: exact products with the stored rows
        want = idx.embeddings[[idx.position(i) for i in r.ids]].float() @ q[approx.index(r)]
        torch.testing.assert_close(torch.tensor(r.scores), want, atol=1e-5, rtol=0)
    excluded = idx.search(q[:2], k=10, exclude=[set(exact[0].ids[:3]), None])
    assert not set(excluded[0].ids) & set(exact[0].ids[:3]) and len(excluded[0]) == 10


def test_searcher_protocol_backends_agree(ann_dir):
    idx = GalleryIndex.load(ann_dir)
    ivf = IvfPqSearcher.load(idx, nprobe=16, rescore=200)
    exact = ExactSearcher(idx)
    assert isinstance(ivf, Searcher) and isinstance(exact, Searcher)
    q = clustered_queries(idx.embeddings, 5, seed=9)
    (s1, ids1), (s2, ids2) = exact.search(q, 5), ivf.search(q, 5)
    assert ids1[0][0] == ids2[0][0] and s1.shape == s2.shape == (5, 5)
    torch.testing.assert_close(
        ivf.fetch(ids1[0]), idx.embeddings[[idx.position(i) for i in ids1[0]]].float()
    )


def test_stale_or_missing_index_is_refused(ann_dir, tmp_path):
    idx = GalleryIndex.load(ann_dir)
    copy = tmp_path / "copy"
    idx.save(copy)
    with pytest.raises(DataError, match="cir index ann"):
        GalleryIndex.load(copy).use_backend("ivfpq")
    build_ivfpq(copy, max_memory=10**6)
    again = GalleryIndex.load(copy)
    again.remove(["g0"])
    again.save(copy)  # a new generation of the gallery: the old approximate index goes
    assert not (copy / META).exists() and not list(copy.glob("ann-ivfpq.*"))
    build_ivfpq(copy, max_memory=10**6)
    meta = json.loads((copy / META).read_text())
    (copy / META).write_text(json.dumps({**meta, "generation": "embeddings.old:6000"}))
    with pytest.raises(DataError, match="earlier version"):
        GalleryIndex.load(copy).use_backend("ivfpq")
    with pytest.raises(ConfigError, match="unknown search backend"):
        idx.use_backend("annoy")


def test_damaged_description_is_a_clear_error(ann_dir, tmp_path):
    idx = GalleryIndex.load(ann_dir)
    folder = tmp_path / "g"
    idx.save(folder)
    build_ivfpq(folder, max_memory=10**6)
    meta = json.loads((folder / META).read_text())
    (folder / META).write_text(json.dumps({**meta, "file": "../elsewhere"}))
    with pytest.raises(DataError, match="not a valid approximate-index description"):
        GalleryIndex.load(folder).use_backend("ivfpq")


def _states(idx, n, stage, seed=20):
    g = torch.Generator().manual_seed(seed)
    q = clustered_queries(idx.embeddings, 3 * n, seed=seed)
    out = []
    for i in range(n):
        s = QueryState(Query(f"q{i}", reference_id=f"g{i * 7}", id=f"q{i}"))
        s.embeddings["query"], s.embeddings["text"], s.embeddings["caption"] = q[3 * i : 3 * i + 3]
        s.embeddings["image"] = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
        s.trace.append(StageRecord(stage=stage.name, name=stage.instance))
        out.append(s)
    return out


@pytest.mark.parametrize(
    "params,least",
    [
        ({"rule": "weimocir", "rule_params": {"beta": 0.2}}, 8),
        ({"rule": "seize", "rule_params": {"reference_score": -1.0}}, 8),
        ({"rule": "dot", "hubness": {"method": "csls", "k": 5}}, 8),
        # the best of min(two similarities) are rarely near either vector: few are covered
        ({"rule": "intersection", "rule_params": {"image": "caption"}, "query": "text"}, 1),
    ],
)
def test_rules_on_candidates_equal_exact_rules(ann_dir, params, least):
    exact_idx = GalleryIndex.load(ann_dir)
    ann_idx = GalleryIndex.load(ann_dir).use_backend("ivfpq", nprobe=8, rescore=150)
    stage = Retrieve(k=10, exclude_reference=True, **params)
    exact = stage.run(_states(exact_idx, 12, stage), Context(index=exact_idx))
    approx = stage.run(_states(ann_idx, 12, stage), Context(index=ann_idx))
    probes = [stage._probes(s, D) for s in approx]
    _, candidates = candidate_view(ann_idx, probes, 150)
    covered = 0
    for e, a, found in zip(exact, approx, candidates, strict=True):
        assert a.trace[-1].notes["approximate"].startswith("ivfpq")
        if set(e.ranking.ids) <= set(found):  # the true top-k are candidates: the same ranking
            covered += 1
            assert a.ranking.ids == e.ranking.ids
            torch.testing.assert_close(
                torch.tensor(a.ranking.scores), torch.tensor(e.ranking.scores)
            )
    assert covered >= least


def test_candidate_view_keeps_references_and_restrictions(ann_dir):
    idx = GalleryIndex.load(ann_dir).use_backend("ivfpq", nprobe=4, rescore=20)
    probes = [clustered_queries(idx.embeddings, 2, seed=1), torch.empty(0, D)]
    view, lists = candidate_view(idx, probes, 20, restrict=[None, ["g5", "g9"]], keep=["g1"])
    assert lists[1] == ["g5", "g9"] and 20 <= len(lists[0]) <= 40
    assert set(view.ids) == set(lists[0]) | {"g5", "g9", "g1"}
    torch.testing.assert_close(view.sidecar("captions")[0][view.position("g5")],
                               idx.sidecar("captions")[0][idx.position("g5")])  # fmt: skip
    plain = GalleryIndex.load(ann_dir)
    assert candidate_view(plain, probes, 20, restrict=None) == (plain, None)


def test_an_unsaved_index_has_no_approximate_index():
    idx = GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, 8))
    with pytest.raises(DataError, match="never saved"):
        idx.use_backend("ivfpq")
