"""The run engine through ``cir bench run`` with tiny real models: one language model resident
at a time, split-wide stages independent of the batch size, and a killed run that resumes to
byte-identical predictions."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from cir.bench.placeholders import make_miniature
from cir.bench.runner import run_benchmark
from cir.pipeline import load_pipeline
from cir.resources import Resources

REPO = Path(__file__).resolve().parents[2]


class WatchedResources(Resources):
    """Resources that keep a weak reference to everything they load (to prove releases)."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: dict = {}

    def _build(self, key, factory):
        item = super()._build(key, factory)
        with contextlib.suppress(TypeError):  # plain dicts cannot be watched
            self.watched[key] = weakref.ref(item)
        return item

    def alive(self, kind: str = "llm") -> list:
        gc.collect()
        return [k for k, ref in self.watched.items() if k[0] == kind and ref() is not None]


@pytest.fixture(scope="module")
def circo(fixtures_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    return make_miniature("circo", fixtures_root / "circo", root / "circo", 6, 50, ("val",))


def _language(tiny_models: dict) -> dict:
    vlm = {"backend": "transformers", "model": tiny_models["vlm"]}
    return {
        "stages.caption.captioner": {"backend": "transformers", "model": tiny_models["blip"]},
        "stages.caption.max_tokens": 6,
        "stages.recompose.llm": {"backend": "transformers", "model": tiny_models["lm"]},
        "stages.recompose.max_tokens": 8,
        "vlm": vlm,
    }


def _overrides(name: str, tiny_models: dict) -> list[str]:
    lang = _language(tiny_models)
    vlm = lang.pop("vlm")
    if name == "best":
        lang |= {
            "stages.caption.num_captions": 3,
            "stages.rerank_wide.llm": vlm, "stages.rerank_wide.top_n": 6,
            "stages.rerank_wide.tile_size": 48, "stages.rerank_wide.max_tokens": 12,
            "stages.rerank.llm": vlm, "stages.rerank.top_n": 4, "stages.rerank.max_tokens": 12,
            "stages.retrieve.rule": "dot", "stages.retrieve.rule_params": {},
        }  # fmt: skip
    return [f"{k}={json.dumps(v)}" for k, v in lang.items()]


@pytest.mark.parametrize("name", ["cirevl", "best"])
def test_one_language_model_is_resident_at_a_time(name, circo, tiny_models, tiny_clip, tmp_path):
    resources = WatchedResources()
    result = run_benchmark(
        "circo", "val", data_root=circo, pipeline=name, encoder=tiny_clip,
        out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
        overrides=_overrides(name, tiny_models), resources=resources,
    )  # fmt: skip
    lifecycle = result.manifest["model_lifecycle"]
    assert lifecycle["peak_language_models"] == 1
    loads = [e["model"] for e in lifecycle["events"] if e["action"] == "load"]
    language = [m for m in loads if m.startswith("transformers:")]
    assert len(language) == len(set(language)) == (2 if name == "cirevl" else 3)  # once each
    assert resources.alive("llm") == []  # every language model was released and collected
    assert resources.keys() == []


def test_split_wide_ensemble_gives_the_same_predictions_in_any_number_of_batches(
    circo, tiny_models, tiny_clip, tmp_path
):
    more = ["stages.caption.num_captions=3", "stages.caption.temperature=1.0"]
    overrides = [*_overrides("ldre", tiny_models), *more]
    runs = {}
    for batch in (1, 2, 64):  # 6 queries: 6 batches, 3 batches, one batch
        out = tmp_path / f"b{batch}"
        run_benchmark(
            "circo", "val", data_root=circo, pipeline="ldre_pdv", encoder=tiny_clip,
            out_dir=out, cache_dir=tmp_path / "cache", batch_size=batch, progress=False,
            overrides=overrides, resources=Resources(),
        )  # fmt: skip
        runs[batch] = (out / "circo_val_submission.json").read_bytes()
    assert runs[1] == runs[2] == runs[64]


def test_ldre_weights_span_the_whole_query_set(circo, tiny_models, tiny_clip, sample_index):
    # one distinct target per slot (answers cycle in arrival order, three per query), so the
    # slots' drops differ whatever the tiny captioner writes
    slots = {
        "backend": "scripted",
        "name": "ldre-slots",
        "responses": ["a red car on a road", "a blue boat at sea", "a green tree"],
    }
    pipe = load_pipeline(
        "ldre_pdv",
        overrides=[*_overrides("ldre", tiny_models), "stages.caption.num_captions=3",
                   "stages.retrieve.k=4", f"stages.recompose.llm={json.dumps(slots)}"],
    )  # fmt: skip
    from cir import Query

    queries = [Query(t, reference_id=i) for i, t in zip(sample_index.ids[:5], "abcde", strict=True)]
    states = pipe.run(queries, sample_index, batch_size=2, resources=Resources())
    notes = [s.record("ensemble").notes for s in states]
    assert {n["weights_over_queries"] for n in notes} == {5}
    assert all(n["weights"] == notes[0]["weights"] for n in notes)  # one weight per slot
    assert len(set(notes[0]["weights"])) > 1  # the drops really differ between slots


def _cache_entries(cache_dir: Path) -> int:
    db = cache_dir / "cache.sqlite3"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as con:
            return con.execute("SELECT COUNT(*) FROM entries WHERE kind != 'embedding'").fetchone()[
                0
            ]
    except sqlite3.Error:
        return 0


def _bench_command(circo: Path, out: Path, cache: Path, tiny_clip: str, tiny_models) -> list:
    chunks = ["stages.caption.chunk_size=1", "stages.recompose.chunk_size=1"]
    overrides = [*_overrides("cirevl", tiny_models), *chunks]
    sets = [arg for o in overrides for arg in ("--set", o)]
    return [
        sys.executable, "-m", "cir.cli", "bench", "run", "circo", "--split", "val",
        "--data-root", str(circo), "--pipeline", "cirevl", "--encoder", tiny_clip,
        "--out", str(out), "--cache-dir", str(cache), "--batch-size", "2", *sets,
    ]  # fmt: skip


def test_a_killed_run_resumes_to_byte_identical_predictions(
    circo, tiny_models, tiny_clip, tmp_path
):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    whole = _bench_command(circo, tmp_path / "whole", tmp_path / "c1", tiny_clip, tiny_models)
    subprocess.run(whole, env=env, check=True, capture_output=True, timeout=600)

    cache = tmp_path / "c2"
    first = _bench_command(circo, tmp_path / "killed", cache, tiny_clip, tiny_models)
    proc = subprocess.Popen(first, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _cache_entries(cache) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "circo_val_submission.json").exists()

    again = _bench_command(circo, tmp_path / "killed", cache, tiny_clip, tiny_models)
    subprocess.run([*again, "--json"], env=env, check=True, capture_output=True, timeout=600)
    for name in ("circo_val_submission.json", "metrics.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["trace_totals"]["cache_hits"] >= 3  # the finished part came from the cache
