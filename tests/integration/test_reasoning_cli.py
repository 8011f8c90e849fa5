"""The five reasoning methods through ``cir search``, ``cir bench run`` and the demo engine: each
shipped pipeline file runs with only its models swapped (scripted answers, a tiny CLIP)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cir.bench.placeholders import make_miniature
from cir.cli import cli
from cir.gallery_captions import set_caption_sidecar
from cir.index import GalleryIndex

DECOMPOSE = (
    '```json\n{"edits": [["Modification", "Make it blue."]], "targets": ["a blue square"]}\n```'
)
PROPOSITIONS = '{"questions": [["Is it blue?", "yes"]]}'
COTMR = '{"target_caption": "a blue square", "present_objects": ["square"], "absent_objects": []}'
MCOTRE = '{"modification_caption": "a blue square", "integrated_caption": "a blue square photo"}'


def scripted(name: str, answer: str) -> dict:
    return {"backend": "scripted", "name": name, "default": answer}


#: per pipeline: its language models swapped for scripted ones (every other setting shipped)
MODELS = {
    "imagescope": {
        "stages.caption.captioner": scripted("cli-cap", "a red square"),
        "gallery_captions.captioner": scripted("cli-gallery-cap", "a photo of a square"),
        "stages.decompose.llm": scripted("cli-dec", DECOMPOSE),
        "stages.propositions.llm": scripted("cli-prop", PROPOSITIONS),
        "stages.verify_propositions.llm": scripted("cli-vqa", "yes"),
        "stages.evaluate.llm": scripted("cli-eval", "Answer: Yes"),
    },
    "cotmr": {"stages.analyze.llm": scripted("cli-cotmr", COTMR)},
    "mcotre": {"stages.analyze.llm": scripted("cli-mcotre", MCOTRE)},
    "setr": {"stages.rerank.llm": scripted("cli-setr", "Yes")},
    "cirevl_sc4cir": {
        "stages.caption.captioner": scripted("cli-sc-cap", "a red square"),
        "stages.recompose.llm": scripted("cli-sc-rc", "Target Description: a blue square"),
        "stages.consistency.llm": scripted("cli-sc", "make it blue"),
    },
}
LAST_STAGE = {"imagescope": "evaluate", "cotmr": "retrieve", "mcotre": "rescore",
              "setr": "rerank", "cirevl_sc4cir": "consistency"}  # fmt: skip


def set_args(name: str) -> list[str]:
    args = []
    for key, value in MODELS[name].items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_clip) -> Path:
    from cir.models import load_encoder

    folder = tmp_path_factory.mktemp("cli_gallery")
    for i in range(8):
        arr = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"im{i}.png")
    encoder = load_encoder(tiny_clip)
    out = tmp_path_factory.mktemp("cli_index") / "index"
    index = GalleryIndex.build(folder, encoder, out=out, num_workers=0, progress=False)
    add_captions(index, encoder)
    index.save(out)
    return out


def add_captions(index: GalleryIndex, encoder) -> None:
    """One caption per gallery image, as `cir index caption --num-captions 1` makes them."""
    set_caption_sidecar(index, [[f"a photo numbered {i}"] for i in range(len(index))], encoder)


@pytest.mark.parametrize("name", list(MODELS))
def test_cir_search_runs_each_method(name, index_dir, tmp_path):
    args = ["search", "--index", str(index_dir), "--reference-id", "im0.png",
            "--text", "make it blue", "--pipeline", name, "-k", "5", "--json",
            "--cache-dir", str(tmp_path), *set_args(name)]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert len(summary["ranking"]["ids"]) == 5 and len(set(summary["ranking"]["ids"])) == 5
    assert summary["trace"][-1]["name"] == LAST_STAGE[name]


@pytest.fixture(scope="module")
def bench_root(fixtures_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reasoning_bench")
    make_miniature("cirr", fixtures_root / "cirr", root / "cirr", n_queries=3, distractors=50)
    return root


def bench(bench_root: Path, tiny_clip: str, pipeline: str, out: str, extra=()) -> CliRunner:
    args = ["bench", "run", "cirr", "--split", "val", "--data-root", str(bench_root / "cirr"),
            "--pipeline", pipeline, "--encoder", tiny_clip, "--out", str(bench_root / out),
            "--cache-dir", str(bench_root / "cache"), "--json", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("name", list(MODELS))
def test_cir_bench_run_scores_each_method_on_cirr(name, bench_root, tiny_clip):
    res = bench(bench_root, tiny_clip, name, name, set_args(name))
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["queries"] == 3
    manifest = json.loads((bench_root / name / "manifest.json").read_text())
    assert manifest["presets"] == ["cirr"] and manifest["protocol"]["exclude_reference"] is True
    if name == "imagescope":  # the run captioned the gallery first, as the pipeline declares
        (info,) = manifest["indexes"].values()
        assert info["gallery_captions"]["images"] == info["images"]
    recall = json.loads((bench_root / name / "cirr_val_recall.json").read_text())
    rankings = [ids for key, ids in recall.items() if key not in ("version", "metric")]
    assert len(rankings) == 3 and all(len(ids) == 50 for ids in rankings)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_demo_runs_each_method_and_shows_its_trace(name, index_dir):
    from demos.engine import DemoEngine
    from demos.render import trace_html

    overrides = [f"{k}={json.dumps(v)}" for k, v in MODELS[name].items()]
    engine = DemoEngine(GalleryIndex.load(index_dir), [name], overrides)
    outcome = engine.run(name, "make it blue", reference_id="im0.png", settings={"top_k": 6})
    assert outcome.ok, outcome.error
    assert len(outcome.state.ranking) == 6
    html = trace_html(outcome)
    assert LAST_STAGE[name] in html
    if name != "cotmr":  # every other method re-orders candidates: the page shows the moves
        assert "Re-ranking" in html
