"""Each method's published formula, computed here from the encoder's own embeddings, against a
real ``cir bench run`` of its pipeline (default presets) on the CIRCO fixture.

The encoder is a tiny random open_clip model: the test reads its embeddings back (texts, raw or
normalised; the gallery as the run's index stores it) and computes the reference formula with
plain tensor code; the language models are scripted, so captions and edits are known. The run
goes in several batches, so split-wide rules are checked across batches.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir.bench.gallery import index_folder
from cir.bench.placeholders import make_miniature
from cir.bench.runner import open_run, run_benchmark
from cir.index import GalleryIndex
from cir.models import load_encoder
from cir.resources import Resources

CAPTIONS = ["a red car", "a dog on grass", "two kites", "a bowl of fruit", "a man in a hat",
            "a sandy beach", "a busy street"]  # fmt: skip
EDITS = ["a blue car", "a cat on grass", "three kites at dusk", "an empty bowl", "a woman"]
TOL = 2e-3  # the gallery is stored and may be scored in float16


@pytest.fixture(scope="module")
def circo(fixtures_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formulas")
    return make_miniature("circo", fixtures_root / "circo", root / "circo", 6, 50, ("val",))


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    return load_encoder(tiny_clip)


def _scripted(num_captions: int = 3) -> list[str]:
    cap = {"backend": "scripted", "name": "captions", "responses": CAPTIONS}
    llm = {"backend": "scripted", "name": "edits", "responses": EDITS}
    return [
        f"stages.caption.captioner={json.dumps(cap)}",
        f"stages.recompose.llm={json.dumps(llm)}",
        f"stages.caption.num_captions={num_captions}",
    ]


def _run(pipeline: str, circo: Path, clip: str, tmp_path: Path, overrides=()) -> dict:
    cache = tmp_path / "cache"
    run = run_benchmark(
        "circo", "val", data_root=circo, pipeline=pipeline, encoder=clip, out_dir=tmp_path / "run",
        cache_dir=cache, batch_size=2, progress=False, overrides=list(overrides),
        resources=Resources(),
    )  # fmt: skip
    lines = (run.out_dir / "queries.jsonl").read_text().splitlines()
    _, _, spec, parts = open_run("circo", circo, None, pipeline, "val", clip)
    index = GalleryIndex.load(index_folder(cache, "circo", parts[0], spec) / "index")
    return {
        "queries": [json.loads(line) for line in lines],
        "ranked": json.loads((run.out_dir / "circo_val_submission.json").read_text()),
        "index": index,
        "gallery": index.embeddings.float().cpu(),
        "part": parts[0],
    }


def _assert_ranking(
    ranked: list[str], ids: list[str], scores: torch.Tensor, tol: float = TOL
) -> None:
    """The run's ranking is the formula's: sorted by the formula's scores (up to float16 ties),
    and nothing the formula scores higher is left out."""
    by_id = dict(zip(ids, scores.tolist(), strict=True))
    ranked = [str(i) for i in ranked]  # CIRCO submissions name images by number
    values = [by_id[i] for i in ranked]
    assert all(a >= b - tol for a, b in itertools.pairwise(values)), values
    left_out = [by_id[i] for i in ids if i not in set(ranked)]
    assert not left_out or max(left_out) <= min(values) + tol
    assert max(values) - min(values) > 20 * tol  # the scores separate the images
    best = max(ids, key=by_id.get)
    assert by_id[ranked[0]] >= by_id[best] - tol


def _texts(encoder, texts: list[str], normalize: bool = True) -> torch.Tensor:
    return encoder.encode_texts(texts, normalize=normalize).float()


def _ldre_weights(run: dict, encoder, topk: int = 5, temperature: float = 0.04):
    """LDRE's CIRCO ensemble: one weight per slot from the drops of every query of the split."""
    g = run["gallery"]
    drops = []
    for q in run["queries"]:
        b, t = _texts(encoder, q["captions"]), _texts(encoder, q["targets"])
        d = (b @ g.T - t @ g.T).clamp(min=0)
        drops.append(d.topk(topk, dim=1).values.sum(dim=1))
    r = torch.stack(drops).sum(dim=0)
    return torch.softmax(r / r.max() / temperature, dim=0)


def test_ldre_ensemble_over_the_whole_split_is_the_reference(circo, tiny_clip, encoder, tmp_path):
    run = _run("ldre", circo, tiny_clip, tmp_path, _scripted())
    w = _ldre_weights(run, encoder)
    ids = list(run["index"].ids)
    for q in run["queries"]:
        assert q["notes"]["ensemble"]["weights_over_queries"] == 6  # 3 batches of 2, one split
        assert q["notes"]["ensemble"]["weights"] == pytest.approx(w.tolist(), abs=1e-3)
        query = w @ _texts(encoder, q["targets"])
        _assert_ranking(run["ranked"][q["id"]], ids, query @ run["gallery"].T)
    assert len(set(w.tolist())) > 1  # the drops really differ between slots


def test_seize_scores_the_reference_minus_one_on_circo(circo, tiny_clip, encoder, tmp_path):
    run = _run("seize", circo, tiny_clip, tmp_path, _scripted())
    ids, g = list(run["index"].ids), run["gallery"]
    moved = 0
    for q in run["queries"]:
        t = F.normalize(_texts(encoder, q["targets"], normalize=False).mean(dim=0), dim=-1)
        c = F.normalize(_texts(encoder, q["captions"], normalize=False).mean(dim=0), dim=-1)
        ds = t @ g.T - c @ g.T
        s = t @ g.T + 2.1 * ds.clamp(max=0) + 0.13 * ds.clamp(min=0)
        row = ids.index(q["reference_id"])
        above_own = int((s > s[row]).sum())  # where the reference would rank on its own score
        s[row] = -1.0
        ranked = run["ranked"][q["id"]]
        _assert_ranking(ranked, ids, s)
        above = int((s > -1.0).sum())  # every image the formula puts above the reference
        assert (int(q["reference_id"]) in ranked) == (above < len(ranked))
        if above_own < len(ranked) and above_own < above:
            assert int(q["reference_id"]) not in ranked[: above_own + 1]
            moved += 1
    assert moved > 0  # the -1 changed some ranking (the reference is not simply dropped)


def test_weimocir_mixes_raw_features_and_forms_per_caption_queries(
    circo, tiny_clip, encoder, tmp_path
):
    from cir.replay.apply import replay_gallery_captions

    _, _, _, parts = open_run("circo", circo, None, "weimocir", "val", tiny_clip)
    ids = list(parts[0].gallery)
    rows = [{"candidate": i, "captions": [CAPTIONS[(n + k) % 7] for k in range(4)]}
            for n, i in enumerate(ids)]  # fmt: skip
    file = tmp_path / "captions.json"
    file.write_text(json.dumps(rows))
    replay_gallery_captions(
        file, dataset="circo", data_root=circo, pipeline="weimocir", split="val",
        cache_dir=tmp_path / "cache", encoder=tiny_clip,
    )  # fmt: skip
    run = _run("weimocir", circo, tiny_clip, tmp_path)
    index, g = run["index"], run["gallery"]
    captions = index.sidecar("captions")[0].float().cpu()  # (N, 3, D): the first 3 of each
    for q in run["queries"]:
        path = run["part"].gallery[q["reference_id"]]
        v = encoder.encode_images([Image.open(path).convert("RGB")], normalize=False)[0].float()
        t = _texts(encoder, [q["text"]], normalize=False)[0]
        query = F.normalize(0.2 * v + 0.8 * t, dim=-1)  # raw projector outputs mixed
        own = captions[index.position(q["reference_id"])]  # (3, D)
        # q_k from the reference's own k-th caption; the sidecar keeps normalised caption
        # features, so the text is normalised too (both come from the same text tower)
        per_caption = F.normalize(0.2 * own + 0.8 * F.normalize(t, dim=-1), dim=-1)
        caption_term = torch.einsum("kd,nkd->nk", per_caption, captions).mean(dim=1)
        s = 0.9 * (query @ g.T) + 0.1 * caption_term
        tol = 1e-3 * float(s.max() - s.min())  # scored in float32: tight, relative to the spread
        _assert_ranking(run["ranked"][q["id"]], list(index.ids), s, tol)


def test_ldre_pdv_steers_the_whole_split_ensemble_with_the_image(
    circo, tiny_clip, encoder, tmp_path
):
    run = _run("ldre_pdv", circo, tiny_clip, tmp_path, _scripted())
    w = _ldre_weights(run, encoder)
    index, g = run["index"], run["gallery"]
    for q in run["queries"]:
        r = F.normalize(_texts(encoder, q["captions"]).mean(dim=0), dim=-1)
        t = F.normalize(w @ _texts(encoder, q["targets"]), dim=-1)
        v = F.normalize(g[index.position(q["reference_id"])], dim=-1)
        delta = t - r
        query = F.normalize(0.25 * (v + 1.4 * delta) + 0.75 * (r + 1.4 * delta), dim=-1)
        _assert_ranking(run["ranked"][q["id"]], list(index.ids), query @ g.T)


@pytest.fixture(scope="module")
def clip_768(tmp_path_factory) -> str:
    """A tiny open_clip model with ViT-L/14's embedding size, so the LAION-1M mean applies."""
    from cir.testing.clip import tiny_open_clip

    return tiny_open_clip(tmp_path_factory.mktemp("clip_768"), embed_dim=768)


def test_basic_with_the_laion_mean_and_the_authors_corpora_is_the_reference(
    circo, clip_768, tmp_path
):
    import numpy as np

    from cir.stages.basic import CORPUS_DIR

    run = _run("basic", circo, clip_768, tmp_path)
    encoder, index, g = load_encoder(clip_768), run["index"], run["gallery"]
    lines = (CORPUS_DIR / "generic_subjects.csv").read_text().splitlines()
    subjects = [s.strip() for s in lines]  # the header row counts, as the reference reads it
    styles = [s.strip() for s in (CORPUS_DIR / "generic_styles.csv").read_text().splitlines()]
    objects, style_emb = _texts(encoder, subjects), _texts(encoder, styles)
    text_mean = objects.mean(dim=0)
    a, b = objects - text_mean, style_emb - text_mean
    scatter = 0.8 * a.T @ a / (len(a) - 1) - 0.2 * b.T @ b / (len(b) - 1) + 1e-5
    values, vectors = torch.linalg.eigh(scatter.double())
    keep = values.argsort(descending=True)[: min(250, int((values > 0).sum()))]
    projector = (vectors[:, keep] @ vectors[:, keep].T).float()
    mean = torch.from_numpy(np.load(CORPUS_DIR / "laion_1m_mean_clip_vitl14.npy")).reshape(-1)
    centred = g - mean
    sample = centred[torch.linspace(0, len(g) - 1, min(1000, len(g))).long()]
    image_min, text_min = (sample @ sample.T).min(), ((objects - text_mean) @ sample.T).min()
    for q in run["queries"]:
        v = F.normalize(g[index.position(q["reference_id"])], dim=-1) - mean
        projected = v @ projector
        sims = projected @ centred.T
        top = sims.topk(25).indices
        feats = torch.cat([centred[top], v.unsqueeze(0)])
        weights = torch.exp(0.1 * torch.cat([sims[top], torch.ones(1)]))
        image_query = (weights / weights.sum()) @ feats @ projector
        phrases = [f"{o} {q['text']}" for o in subjects[:100]]
        phrases += [f"{q['text']} {o}" for o in subjects[:100]]
        text_query = F.normalize(_texts(encoder, phrases).mean(dim=0), dim=-1) - text_mean
        s_v = ((image_query @ centred.T - image_min) / image_min.abs()).clamp(min=0)
        s_t = ((text_query @ centred.T - text_min) / image_min.abs()).clamp(min=0)
        s = s_v * s_t - 0.1 * (s_v + s_t) ** 2
        tol = 1e-3 * float(s.max() - s.min())  # scored in float32: tight, relative to the spread
        _assert_ranking(run["ranked"][q["id"]], list(index.ids), s, tol)
