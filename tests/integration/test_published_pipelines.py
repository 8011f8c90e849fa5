"""The pipelines that follow CIReVL, OSrCIR, CoTRR and SQUARE through ``cir bench run`` on the
committed benchmark fixtures, with scripted language models and a tiny open_clip model: each
benchmark gets its published prompt and decoding, and CoTRR re-ranks CIRR's image sets itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.datasets import CIRR
from cir.bench.evaluate import evaluate_files
from cir.bench.placeholders import make_miniature
from cir.cli import cli

CAPTIONER = {"backend": "scripted", "default": "a photo of a thing", "name": "pub-cap"}
# two labelled lines and a blank line: CIReVL reads the first line, the stop ends the answer
RECOMPOSER = {
    "backend": "scripted",
    "default": "Edited Description: a red thing\nEdited Description: a blue thing\n\nNote: x",
    "name": "pub-lm",
}
FIELDS = {"reference_description": "a thing", "thoughts": "the intent", "reflections": "keep it"}
REASONER = {
    "backend": "scripted",
    "default": json.dumps(FIELDS | {"target_description": "a red thing"}),
    "name": "pub-reason",
}
RERANKER = {
    "backend": "scripted",
    "by_substring": {"rank all 5 of them": '{"top_5_indices": [5, 4, 3, 2, 1]}'},
    "default": '{"ranking": [2, 1]}',
    "name": "pub-rerank",
}
LANGUAGE = {
    "cirevl": {"caption.captioner": CAPTIONER, "recompose.llm": RECOMPOSER},
    "osrcir": {"reason.llm": REASONER},
    "cotrr": {"reason.llm": REASONER, "rerank.llm": RERANKER},
    "square": {"reason.llm": REASONER, "rerank.llm": RERANKER | {"default": "[2, 1, 3]"}},
}
LANGUAGE["cirevl_pdv"] = LANGUAGE["cirevl"]
LANGUAGE["cirevl_sc4cir"] = LANGUAGE["cirevl"] | {
    "consistency.llm": {"backend": "scripted", "default": "a thing", "name": "pub-sc"}
}


@pytest.fixture(scope="module")
def workspace(fixtures_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("published")
    for name in ("cirr", "circo", "fashioniq"):
        make_miniature(name, fixtures_root / name, root / name, n_queries=3, distractors=50)
    return root


def _run(workspace: Path, clip: str, pipeline: str, dataset: str, *extra: str) -> Path:
    out = workspace / f"{pipeline}-{dataset}"
    sets = [f"stages.{k}={json.dumps(v)}" for k, v in LANGUAGE[pipeline].items()]
    args = [
        "bench", "run", dataset, "--data-root", str(workspace / dataset), "--pipeline", pipeline,
        "--encoder", clip, "--out", str(out), "--cache-dir", str(workspace / "cache"), "--json",
        *(a for s in sets for a in ("--set", s)), *extra,
    ]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return out


def _details(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]


def _stage_params(manifest: dict, name: str) -> dict:
    return next(s["params"] for s in manifest["pipeline"]["stages"] if s["stage"] == name)


@pytest.mark.parametrize(
    ("dataset", "prompt"),
    [("cirr", "cirevl-cirr"), ("circo", "cirevl-circo"), ("fashioniq", "cirevl-fashion")],
)
def test_cirevl_runs_each_benchmarks_published_prompt_and_decoding(
    workspace, tiny_clip, dataset, prompt
):
    out = _run(workspace, tiny_clip, "cirevl", dataset)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["presets"][0] == dataset
    assert f"recompose/{prompt}.v1" in manifest["prompts"]["recompose"]["prompt"]
    recompose = _stage_params(manifest, "recompose")
    assert recompose["stop"] == ["\n\n", "<|endoftext|>"] and recompose["parser"] == {
        "pick": "first"
    }
    assert recompose["max_tokens"] == 700
    caption = _stage_params(manifest, "caption")
    assert (caption["num_beams"], caption["max_tokens"], caption["prompt"]) == (5, 30, "cirevl")
    assert all(d["targets"] == ["a red thing"] for d in _details(out))  # the first line
    assert any("gpt-3.5-turbo" in d["what"] for d in manifest["deviations"])


@pytest.mark.parametrize("pipeline", ["cirevl_pdv", "cirevl_sc4cir", "osrcir", "square"])
def test_published_pipelines_run_on_cirr(workspace, tiny_clip, pipeline):
    out = _run(workspace, tiny_clip, pipeline, "cirr")
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"Recall@1", "Recall_subset@1"} <= set(metrics)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deviations"] and manifest["presets"][0] == "cirr"
    details = _details(out)
    assert len(details) == 3 and all(d["reference_id"] not in d["top10"] for d in details)
    if pipeline in ("osrcir", "square"):  # thoughts and reflections, in that order
        assert all(d["reasoning"][:2] == ["the intent", "keep it"] for d in details)
        assert all(d["captions"] == ["a thing"] for d in details)
        assert "reason/osrcir.v2" in manifest["prompts"]["reason"]["prompt"]
    else:
        assert all(d["targets"] == ["a red thing"] for d in details)


def test_cotrr_reranks_cirrs_image_sets_itself(workspace, tiny_clip):
    out = _run(workspace, tiny_clip, "cotrr", "cirr")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["subset_reranked"] == 3
    rerank = _stage_params(manifest, "rerank")
    assert rerank["subset_members"] == "group_members" and rerank["layout"] == "labelled"
    assert rerank["max_image_side"] is None and rerank["retries"] == 2
    queries = {q.id: q for q in CIRR(workspace / "cirr").queries("val")}
    subsets = json.loads((out / "cirr_val_recall_subset.json").read_text())
    for detail in _details(out):
        query = queries[detail["id"]]
        others = set(query.extras["group_members"]) - {query.reference_id}
        assert len(detail["subset"]) == 5 and set(detail["subset"]) == others
        assert subsets[query.id] == detail["subset"][:3]
    scored = evaluate_files(
        "cirr", "val", workspace / "cirr",
        [out / "cirr_val_recall.json", out / "cirr_val_recall_subset.json"],
    )  # fmt: skip
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(scored.metrics)


def test_the_rerank_stage_orders_the_set_members_best_first(tiny_clip, tmp_path):
    """The stage itself: members other than the reference, in ranking order, re-ordered by the
    model's answer in a request of their own, with a text label before every image."""
    from PIL import Image

    from cir import Query, QueryState, StageRecord
    from cir.index import GalleryIndex
    from cir.llm import load_backend
    from cir.models import load_encoder
    from cir.resources import Resources
    from cir.stages.base import Context
    from cir.stages.rerank import Rerank
    from cir.types import Ranking

    folder = tmp_path / "gallery"
    folder.mkdir()
    colours = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange"]
    for colour in colours:
        Image.new("RGB", (40, 30), colour).save(folder / f"{colour}.png")
    index = GalleryIndex.build(folder, load_encoder(tiny_clip), out=tmp_path / "index",
                               num_workers=0, progress=False)  # fmt: skip
    ids = {i.split(".")[0]: i for i in index.ids}  # colour -> gallery id
    names = {v: k for k, v in ids.items()}
    members = [ids[c] for c in ("red", "green", "blue", "yellow", "white", "black")]
    query = Query("brighter", reference_id=ids["red"], id="q", extras={"group_members": members})
    order = [ids[c] for c in ("purple", "white", "orange", "green", "black", "yellow", "blue")]
    state = QueryState(query, ranking=Ranking(tuple(order), tuple(float(-i) for i in range(7))))
    state.trace.append(StageRecord("rerank", "rerank"))
    resources = Resources()
    ctx = Context(index, resources, None)
    stage = Rerank(llm=RERANKER, prompt="cotrr", top_n=3, layout="labelled",
                   subset_members="group_members", max_image_side=None)  # fmt: skip
    stage.setup(ctx)
    [state] = stage.run([state], ctx)
    reranked = [names[i] for i in state.data["subset_ranking"]]
    assert reranked == ["blue", "yellow", "black", "green", "white"]  # the answer 5, 4, 3, 2, 1
    seen = [names[i] for i in state.data["rerank"]["subset"]["members"]]
    assert seen == ["white", "green", "black", "yellow", "blue"]  # in ranking order
    assert [names[i] for i in state.ranking.ids[:3]] == ["white", "purple", "orange"]
    top, subset = load_backend(RERANKER, resources).calls
    assert len(subset.images) == 6 and subset.images[1].size == (40, 30)  # full size
    labels = [v for k, v in subset.messages[0].parts() if k == "text"]
    assert labels[0].endswith("Reference image:") and labels[-1] == "Image 5:"
    assert len(top.images) == 4
