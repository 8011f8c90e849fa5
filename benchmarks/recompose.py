"""Recompose throughput batched vs one request at a time, and a pipeline re-run from the cache.

1. ``recompose``: the ``recompose`` stage over Q queries with the same tiny causal LM and the same
   transformers backend, either all queries in one batch (``batched``; the backend runs
   ``--batch`` requests per ``generate`` call) or one query per call (``one-by-one``, what the
   published CIReVL/LDRE code does: a loop with one LLM request per query). No cache.
2. ``pipeline``: the ``cirevl`` pipeline (tiny BLIP captioner, tiny LM, tiny CLIP, a 6-image
   gallery) over the same Q queries, first with an empty content cache and then again with the
   filled cache. Models are loaded and warmed up before timing, so the ratio is compute vs
   cache lookups.

Every model is a seeded random tiny model built from a config (``cir.testing``); the numbers
measure the machinery (batching, cache), not model quality.

Usage:
    python benchmarks/recompose.py          # Q=32, batch 32, 16 new tokens (about 2-3 minutes)
    python benchmarks/recompose.py --queries 128 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from cir import Query, QueryState, StageRecord
from cir.cache import ContentCache
from cir.context import Context
from cir.index import GalleryIndex
from cir.models import load_encoder
from cir.pipeline import load_pipeline
from cir.resources import Resources
from cir.stages.recompose import Recompose
from cir.testing.clip import tiny_open_clip
from cir.testing.lm import tiny_blip_captioner, tiny_causal_lm

RESULTS = Path(__file__).resolve().parent / "results"
COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
EDITS = ["make it {c}", "add a {c} hat", "the same but {c} and smaller", "{c} background"]


def modifications(count: int) -> list[str]:
    """Distinct modification texts of varied length."""
    return [
        EDITS[i % len(EDITS)].format(c=COLOURS[i % len(COLOURS)]) + f" #{i}" for i in range(count)
    ]


def states(texts: list[str], caption: str = "a photo of a dress") -> list[QueryState]:
    out = []
    for i, text in enumerate(texts):
        state = QueryState(Query(text, id=f"q{i}"), captions=[caption])
        state.trace.append(StageRecord("recompose", "recompose"))
        out.append(state)
    return out


def time_recompose(lm: str, texts: list[str], batch: int, max_tokens: int) -> dict[str, float]:
    """Seconds for the stage over all texts, batched and one by one (same backend instance)."""
    spec = {"backend": "transformers", "model": lm, "batch_size": batch}
    stage = Recompose(llm=spec, max_tokens=max_tokens, fallback="fallback", chunk_size=batch)
    ctx = Context(None, Resources(), None)
    stage.setup(ctx)
    stage.run(states(["warm up"]), ctx)
    started = time.perf_counter()
    batched = stage.run(states(texts), ctx)
    t_batched = time.perf_counter() - started
    started = time.perf_counter()
    single = [stage.run(states([t]), ctx)[0] for t in texts]
    t_single = time.perf_counter() - started
    same = sum(a.llm_raw == b.llm_raw for a, b in zip(batched, single, strict=True))
    return {"batched_s": t_batched, "one_by_one_s": t_single, "same_outputs": same}


def tiny_gallery(root: Path, clip: str) -> GalleryIndex:
    folder = root / "gallery"
    folder.mkdir()
    for colour in COLOURS:
        Image.new("RGB", (64, 64), colour).save(folder / f"{colour}.png")
    return GalleryIndex.build(
        folder, load_encoder(clip), out=root / "index", num_workers=0, progress=False
    )


def time_pipeline(root: Path, models: dict[str, str], texts: list[str], max_tokens: int) -> dict:
    """Seconds for a cold-cache and a warm-cache run of cirevl over the same queries."""
    index = tiny_gallery(root, models["clip"])
    overrides = {
        "stages.caption.captioner": {"backend": "transformers", "model": models["blip"]},
        "stages.caption.max_tokens": 16,
        "stages.recompose.llm": {
            "backend": "transformers",
            "model": models["lm"],
            "batch_size": 32,
        },
        "stages.recompose.max_tokens": max_tokens,
        "stages.recompose.fallback": "fallback",
        "stages.retrieve.k": 5,
    }
    pipe = load_pipeline("cirevl", overrides=overrides)
    resources = Resources()
    queries = [
        Query(t, reference_id=index.ids[i % len(index.ids)], id=f"q{i}")
        for i, t in enumerate(texts)
    ]
    pipe.run([Query("warm up", reference_id=index.ids[0])], index, cache=None, resources=resources)
    cache = ContentCache(root / "cache")
    started = time.perf_counter()
    first = pipe.run(
        queries, index, batch_size=32, cache=cache, resources=resources, progress=False
    )
    t_first = time.perf_counter() - started
    started = time.perf_counter()
    second = pipe.run(
        queries, index, batch_size=32, cache=cache, resources=resources, progress=False
    )
    t_second = time.perf_counter() - started
    assert [s.ranking.ids for s in first] == [s.ranking.ids for s in second]
    misses = sum(r.cache_misses for s in second for r in s.trace)
    return {"first_s": t_first, "second_s": t_second, "second_run_misses": misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = modifications(args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {
            "lm": tiny_causal_lm(root / "lm"),
            "blip": tiny_blip_captioner(root / "blip"),
            "clip": tiny_open_clip(root / "clip"),
        }
        rec = time_recompose(models["lm"], texts, args.batch, args.max_tokens)
        pipe = time_pipeline(root, models, texts, args.max_tokens)
    rows = [
        ("recompose batched", rec["batched_s"], args.queries / rec["batched_s"]),
        ("recompose one-by-one", rec["one_by_one_s"], args.queries / rec["one_by_one_s"]),
        ("cirevl first run (empty cache)", pipe["first_s"], args.queries / pipe["first_s"]),
        ("cirevl second run (from cache)", pipe["second_s"], args.queries / pipe["second_s"]),
    ]
    print(f"{'measurement':34} {'seconds':>9} {'queries/s':>10}")
    for name, seconds, rate in rows:
        print(f"{name:34} {seconds:9.3f} {rate:10.1f}")
    batch_ratio = rec["one_by_one_s"] / rec["batched_s"]
    cache_ratio = pipe["first_s"] / pipe["second_s"]
    print(f"batched speed-up: {batch_ratio:.1f}x (target >= 5x at batch {args.batch})")
    print(f"cache speed-up:   {cache_ratio:.1f}x (target >= 50x)")
    print(f"identical raw outputs batched vs one-by-one: {rec['same_outputs']}/{args.queries}")
    print(f"model/encoder computations in the second run: {pipe['second_run_misses']}")
    RESULTS.mkdir(exist_ok=True)
    result = {
        "args": vars(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average_1min": os.getloadavg()[0],
        },
        "recompose": rec,
        "pipeline": pipe,
        "batched_speedup": batch_ratio,
        "cache_speedup": cache_ratio,
    }
    (RESULTS / "recompose.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
