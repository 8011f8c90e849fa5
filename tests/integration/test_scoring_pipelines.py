"""The scoring pipelines end to end with tiny models: tiny CLIP, tiny BLIP, a scripted LLM.

Each ranking is checked against the pure functions of ``cir.scoring`` applied to the same
embeddings, so a stage that wires a rule wrongly fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cir import Query
from cir.errors import DataError
from cir.gallery_captions import caption_gallery, import_gallery_captions
from cir.index import GalleryIndex
from cir.pipeline import load_pipeline
from cir.scoring import (
    basic_scores,
    l2_normalize,
    seize_scores,
    weimocir_query,
    weimocir_scores,
)
from cir.stages.caption import Caption

EDITS = {
    "make it red": "Target Description: a red object on a table",
    "add a dog": "Target Description: a dog next to the object",
    "at night": "Target Description: the same scene at night",
}
LLM = {"backend": "scripted", "by_substring": EDITS, "default": "Target Description: a photo"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_clip):
    from cir.models import load_encoder
    from cir.testing.lm import tiny_blip_captioner

    tmp = tmp_path_factory.mktemp("scoring")
    root = tmp / "gallery"
    root.mkdir()
    for i in range(12):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"im{i:02d}.png")
    encoder = load_encoder(tiny_clip)
    index = GalleryIndex.build(root, encoder, out=tmp / "index", num_workers=0, progress=False)
    blip = tiny_blip_captioner(tmp / "blip")
    captioner = {"backend": "transformers", "model": blip}
    stage = Caption(captioner=captioner, num_captions=3, temperature=1.0, top_p=0.9, max_tokens=10)
    caption_gallery(index, stage, encoder, batch_size=5)
    index.save(tmp / "index")
    return {"index": index, "encoder": encoder, "captioner": captioner, "tmp": tmp}


def _queries(index):
    return [
        Query("make it red", reference_id=index.ids[0], id="a"),
        Query("add a dog", reference_id=index.ids[5], id="b"),
        Query("at night", reference_id=index.ids[9], id="c"),
    ]


def _language_overrides(world, n=1):
    out = {"stages.caption.captioner": world["captioner"], "stages.caption.max_tokens": 10}
    out["stages.recompose.llm"] = LLM
    if n > 1:
        out["stages.caption.num_captions"] = n
    return out


def _check_ranking(state, scores, index, k):
    ranking = state.ranking
    top = scores.topk(k)
    assert list(ranking.ids) == [index.ids[i] for i in top.indices.tolist()]
    assert list(ranking.scores) == pytest.approx(top.values.tolist(), abs=1e-4)


def test_weimocir_pipeline_matches_the_formula(world):
    index = world["index"]
    pipe = load_pipeline("weimocir", overrides={"stages.retrieve.k": 6})
    states = pipe.run(_queries(index), index)
    gallery = index.embeddings.float()
    captions = index.sidecar("captions")[0].float()
    for state in states:
        # the pipeline mixes raw projector outputs, as the reference code does
        q = weimocir_query(state.embeddings["image"], state.embeddings["text"], 0.8, raw=True)
        row = index.position(state.query.reference_id)
        qk = weimocir_query(captions[row], state.embeddings["text"].expand(3, -1), 0.8)
        want = weimocir_scores(q[None], gallery, captions, qk[None], beta=0.1)[0]
        _check_ranking(state, want, index, 6)
        assert state.trace[-1].fallbacks == 0 and state.trace[-1].notes["rule"] == "weimocir"


def test_weimocir_paper_form_and_fallback_for_outside_reference(world):
    index = world["index"]
    image = Image.open(index.path(index.ids[3]))
    queries = [Query("make it red", reference=image, id="outside")]
    pipe = load_pipeline("weimocir", overrides={"stages.retrieve.k": 4})
    state = pipe.run(queries, index)[0]
    record = state.trace[-1]
    assert record.fallbacks == 1 and "q_k = q" in record.notes["fallback"]
    paper = load_pipeline(
        "weimocir", overrides={"stages.retrieve.rule_params.caption_query": "paper"}
    )
    paper_state = paper.run(queries, index)[0]
    assert paper_state.trace[-1].fallbacks == 0
    assert state.ranking.ids[:4] == paper_state.ranking.ids[:4]
    beta0 = load_pipeline("weimocir", overrides={"stages.retrieve.rule_params.beta": 0.0})
    fused = load_pipeline("clip_fusion")
    assert beta0.run(queries, index)[0].ranking.ids == fused.run(queries, index)[0].ranking.ids


def test_pdv_identity_gives_the_base_pipeline_end_to_end(world):
    index = world["index"]
    over = _language_overrides(world)
    base = load_pipeline("cirevl", overrides=over).run(_queries(index), index)
    same = {**over, "stages.pdv.beta": 1.0, "stages.pdv.alpha_text": 1.0}
    pdv_states = load_pipeline("cirevl_pdv", overrides=same).run(_queries(index), index)
    for b, p in zip(base, pdv_states, strict=True):
        assert b.ranking.ids == p.ranking.ids
        assert list(b.ranking.scores) == pytest.approx(list(p.ranking.scores), abs=1e-5)
    fused = load_pipeline("cirevl_pdv", overrides=over).run(_queries(index), index)
    assert any(f.ranking.ids != b.ranking.ids for f, b in zip(fused, base, strict=True))
    assert fused[0].trace[-2].notes["alpha_image"] == pytest.approx(1.4)


def test_ldre_pdv_shares_slot_weights_over_the_query_set(world):
    index = world["index"]
    over = _language_overrides(world, n=3)
    states = load_pipeline("ldre_pdv", overrides=over).run(_queries(index), index, batch_size=8)
    weights = [s.record("ensemble").notes["weights"] for s in states]
    assert len(weights[0]) == 3 and sum(weights[0]) == pytest.approx(1.0, abs=1e-5)
    assert weights[0] == weights[1] == weights[2]
    per_query = {**over, "stages.ensemble.scope": "per_query"}
    states = load_pipeline("ldre_pdv", overrides=per_query).run(_queries(index), index)
    for s in states:
        assert sum(s.record("ensemble").notes["weights"]) == pytest.approx(1.0, abs=1e-5)
        assert s.ranking is not None and len(s.ranking) == 12


def test_seize_pipeline_matches_the_formula(world):
    index = world["index"]
    over = {**_language_overrides(world, n=2), "stages.retrieve.k": 12}
    states = load_pipeline("seize", overrides=over).run(_queries(index), index)
    gallery = index.embeddings.float()
    for state in states:
        t, c = state.embeddings["target"][None], state.embeddings["caption"][None]
        _check_ranking(state, seize_scores(t, c, gallery, 2.1, 0.13)[0], index, 12)
    over["stages.retrieve.rule_params.reference_score"] = -1.0
    for state in load_pipeline("seize", overrides=over).run(_queries(index), index):
        assert state.ranking.ids[-1] == state.query.reference_id
        assert state.ranking.scores[-1] == -1.0


def test_basic_pipeline_matches_the_formula(world, tmp_path):
    index = world["index"]
    objects, styles = tmp_path / "objects.txt", tmp_path / "styles.txt"
    objects.write_text("# mine\ndog\ncat\nhouse\ntree\ncar\n")
    styles.write_text("a sketch\na painting\nat night\nin the snow\n")
    over = {"stages.basic.objects": str(objects), "stages.basic.styles": str(styles)}
    over["stages.basic.image_mean"] = None  # the gallery mean (the LAION mean is ViT-L/14's)
    over.update({"stages.basic.components": 4, "stages.basic.expansion_size": 3})
    states = load_pipeline("basic", overrides={**over, "stages.retrieve.k": 12}).run(
        _queries(index), index
    )
    calib = states[0].data["basic"]
    assert calib["image_min"] < 0 and calib["text_min"] is not None
    gallery = index.embeddings.float()
    for state in states:
        v, t = state.embeddings["basic_image"][None], state.embeddings["basic_text"][None]
        want = basic_scores(
            v, t, gallery, calib["image_mean"], calib["image_min"], calib["text_min"], 0.1
        )[0]
        _check_ranking(state, want, index, 12)
    with pytest.raises(DataError, match="does not exist"):
        bad = {**over, "stages.basic.objects": str(tmp_path / "missing.txt")}
        load_pipeline("basic", overrides=bad).run(_queries(index)[:1], index)


def test_hubness_correction_in_retrieve(world):
    index = world["index"]
    over = {"stages.retrieve.hubness.method": "inverted_softmax", "stages.retrieve.k": 12}
    states = load_pipeline("clip_fusion", overrides=over).run(_queries(index), index)
    bank = l2_normalize(index.sidecar("captions")[0].float().reshape(-1, index.dim))
    gallery = index.embeddings.float()
    for state in states:
        s = state.embeddings["query"] @ gallery.T
        want = s / 0.05 - torch.logsumexp((bank @ gallery.T) / 0.05, dim=0)
        _check_ranking(state, want, index, 12)


def test_import_captions_file_and_resume(world, tmp_path):
    index, encoder = world["index"], world["encoder"]
    entries = [
        {"candidate": Path(i).stem, "captions": [f"photo {n}", "an image", "a picture"]}
        for n, i in enumerate(index.ids)
    ]
    entries.append({"candidate": "not-in-gallery", "captions": ["x", "y", "z"]})
    path = tmp_path / "caps.json"
    path.write_text(json.dumps(entries))
    copy = GalleryIndex.load(world["tmp"] / "index", mmap=False)
    summary = import_gallery_captions(copy, path, encoder)
    assert summary == {"images": 12, "captions_per_image": 3, "ignored_entries": 1}
    tensor, meta = copy.sidecar("captions")
    assert tensor.shape == (12, 3, index.dim) and meta["captions"][2][0] == "photo 2"
    want = encoder.encode_texts(["photo 2"])[0]
    torch.testing.assert_close(tensor[2, 0].float(), want, atol=2e-3, rtol=0)
    path.write_text(json.dumps(entries[:5]))
    with pytest.raises(DataError, match="no entry for 7 of 12"):
        import_gallery_captions(copy, path, encoder)
    # resume: rows already in the progress file are not captioned again
    progress = tmp_path / "progress.jsonl"
    done = [
        {"candidate": index.ids[n], "captions": e["captions"]} for n, e in enumerate(entries[:4])
    ]
    progress.write_text("".join(json.dumps(e) + "\n" for e in done))
    one = Caption(captioner=world["captioner"], max_tokens=6)
    with pytest.raises(DataError, match="same number"):
        caption_gallery(copy, one, encoder, progress_file=progress)  # 3 resumed, 1 new
    progress.write_text("".join(json.dumps(e) + "\n" for e in done))
    stage3 = Caption(captioner=world["captioner"], num_captions=3, temperature=1.0, max_tokens=6)
    summary = caption_gallery(copy, stage3, encoder, progress_file=progress)
    assert summary == {"images": 12, "captions_per_image": 3, "resumed": 4}
    assert copy.sidecar("captions")[1]["captions"][1] == entries[1]["captions"]
    assert len(progress.read_text().splitlines()) == 12


def test_cli_index_caption_imports_a_file(world, tmp_path):
    from cir.cli import cli

    target = tmp_path / "index"
    shutil.copytree(world["tmp"] / "index", target)
    entries = [{"candidate": i, "captions": ["a", "b"]} for i in world["index"].ids]
    (tmp_path / "caps.json").write_text(json.dumps(entries))
    args = ["index", "caption", str(target), "--captions-file", str(tmp_path / "caps.json")]
    result = CliRunner().invoke(cli, [*args, "--name", "mine"])
    assert result.exit_code == 0, result.output
    assert "captions_per_image 2" in result.output
    assert GalleryIndex.load(target).sidecar("mine")[0].shape[:2] == (12, 2)
    result = CliRunner().invoke(cli, ["index", "caption", str(target)])
    assert result.exit_code != 0 and "exactly one of --captioner" in result.output
