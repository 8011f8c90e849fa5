"""Re-ranking throughput (batched across queries vs one query at a time) and cost per query.

1. ``throughput``: the ``rerank`` stage in each mode over Q queries with the same tiny chat VLM
   and the same backend, either all queries in one ``run`` (``batched``: every request of every
   query goes to the backend together) or one query per ``run`` (``one query``: what a loop over
   queries does). Reported as model requests per second. No cache; the answers are not retried
   (``fallback: fallback``), so both sides send exactly the same requests. The model is loaded
   and warmed up before timing. verify already batches the N pairs of one query, so it is also
   timed one request per backend call (``one_request_rps``), as published verifiers loop.
2. ``cost``: model calls and image tokens per query for each mode at N = 10 and 50 candidates,
   with the stage's default image settings (``max_image_side`` 448, ``tile_size`` 224, a
   near-square grid) on 640x480 gallery photos. The requests are built by the real stage (sent
   to the scripted backend, which records them) and their images are counted by Qwen2-VL's own
   image processor with its default settings (28x28 pixels per token, at most 1280 tokens per
   image), the model family the shipped pipelines default to.

Every model is a seeded random tiny model built from a config (``cir.testing``); the numbers
measure the machinery (batching), not model quality.

Usage:
    .venv-vllm/bin/python benchmarks/rerank.py --backend vllm     # vLLM's CPU build (~2 min)
    python benchmarks/rerank.py --queries 8                       # transformers (~4 min)
    python benchmarks/rerank.py --queries 64 --top-n 20
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
from cir.context import Context
from cir.index import GalleryIndex
from cir.llm import ScriptedLLM, spec_key
from cir.resources import Resources
from cir.stages.rerank import Rerank
from cir.types import Ranking

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("listwise", "grid", "verify")
# Answer lengths of a real model: a listwise chain of thought runs to hundreds of tokens, a grid
# answer is a sentence or two and the ordering, a verify answer needs its first token only. The
# random tiny model rarely stops early, so it writes exactly this many.
ANSWER_TOKENS = {"listwise": 256, "grid": 128, "verify": 1}
EDITS = ["make it red", "add a hat", "the same but smaller", "a darker background", "at night"]


def gallery(folder: Path, count: int, size: tuple[int, int]) -> GalleryIndex:
    """``count`` distinct synthetic photos of ``size`` in ``folder``, indexed with their paths."""
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=generator))
        image = Image.new("RGB", size, colour)
        image.paste(
            (255 - colour[0], colour[1] // 2, 90), (i % size[0], 0, size[0] // 2, size[1] // 3)
        )
        paths.append(folder / f"g{i:03d}.png")
        image.save(paths[-1])
    ids = [p.stem for p in paths]
    return GalleryIndex.from_embeddings(ids, torch.randn(count, 8), paths=paths, device="cpu")


def make_states(index: GalleryIndex, count: int, reference: Image.Image) -> list[QueryState]:
    generator = torch.Generator().manual_seed(1)
    states = []
    for i in range(count):
        order = torch.randperm(len(index), generator=generator).tolist()
        ids = tuple(index.ids[j] for j in order)
        state = QueryState(Query(f"{EDITS[i % len(EDITS)]} #{i}", reference=reference, id=f"q{i}"))
        state.ranking = Ranking(ids, tuple(float(-r) for r in range(len(ids))))
        states.append(state)
    return states


def with_records(states: list[QueryState]) -> list[QueryState]:
    for state in states:
        state.trace = [StageRecord("rerank", "rerank")]
    return states


class Counter:
    """Counts requests reaching a backend (its real ``generate`` still runs)."""

    def __init__(self, backend) -> None:
        self.requests = self.answer_tokens = 0
        self._generate = backend.generate
        backend.generate = self

    def __call__(self, requests):
        self.requests += len(requests)
        generations = self._generate(requests)
        self.answer_tokens += sum(g.completion_tokens or 0 for g in generations)
        return generations


# ---------------------------------------------------------------------------- throughput
def throughput(mode: str, spec: dict, index, reference, args, resources) -> dict:
    params = dict(mode=mode, top_n=args.top_n, llm=spec, fallback="fallback", tile_size=112)
    # every first-token log-probability where the backend allows it (vLLM caps them at 20)
    logprobs = 20 if spec["backend"] == "vllm" else 700
    params |= {"max_tokens": args.max_tokens or ANSWER_TOKENS[mode], "logprobs": logprobs}
    stage = Rerank(**params)
    ctx = Context(index, resources, None)
    stage.setup(ctx)
    counter = Counter(stage.backend)
    stage.run(with_records(make_states(index, 2, reference)), ctx)  # warm-up
    states = with_records(make_states(index, args.queries, reference))
    counter.requests = counter.answer_tokens = 0
    started = time.perf_counter()
    stage.run(states, ctx)
    batched = time.perf_counter() - started
    batched_requests = counter.requests
    answer_tokens = counter.answer_tokens / max(batched_requests, 1)
    single = with_records(make_states(index, args.queries, reference))
    counter.requests = 0
    started = time.perf_counter()
    for state in single:
        stage.run([state], ctx)
    one_by_one = time.perf_counter() - started
    same = sum(a.ranking == b.ranking for a, b in zip(states, single, strict=True))
    one_request = None
    if mode == "verify":  # published verifiers loop over (query, candidate) pairs one by one
        looped = Rerank(**params, chunk_size=1)
        looped.setup(ctx)
        counter.requests = 0
        started = time.perf_counter()
        looped.run(with_records(make_states(index, args.queries, reference)), ctx)
        one_request = round(counter.requests / (time.perf_counter() - started), 2)
    return {
        "mode": mode,
        "queries": args.queries,
        "top_n": args.top_n,
        "requests": batched_requests,
        "answer_tokens": round(answer_tokens, 1),
        "batched_s": round(batched, 3),
        "one_query_s": round(one_by_one, 3),
        "batched_rps": round(batched_requests / batched, 2),
        "one_query_rps": round(counter.requests / one_by_one, 2),
        "speedup": round(one_by_one / batched, 2),
        "one_request_rps": one_request if one_request is not None else "= one query",
        "same_rankings": f"{same}/{args.queries}",
    }


# ---------------------------------------------------------------------------- cost
def image_tokens(images: list[Image.Image], processor) -> int:
    grid = processor(images=images, return_tensors="pt")["image_grid_thw"]
    merge = processor.merge_size**2
    return int(sum(int(t * h * w) // merge for t, h, w in grid.tolist()))


def cost(mode: str, top_n: int, index, reference, processor, queries: int = 2) -> dict:
    answer = "Yes" if mode == "verify" else '{"ranking": [1]}'
    llm = ScriptedLLM(default=answer, name=f"cost-{mode}-{top_n}")
    spec = {"backend": "scripted", "name": f"cost-{mode}-{top_n}", "default": answer}
    resources = Resources()
    resources.get(spec_key(spec), lambda: llm)
    stage = Rerank(mode=mode, top_n=top_n, llm=spec)
    ctx = Context(index, resources, None)
    stage.setup(ctx)
    stage.run(with_records(make_states(index, queries, reference)), ctx)
    images = [im for req in llm.calls for im in req.images]
    sizes = sorted({im.size for im in images}, key=lambda s: -s[0] * s[1])
    return {
        "mode": mode,
        "N": top_n,
        "calls_per_query": len(llm.calls) / queries,
        "images_per_query": len(images) / queries,
        "image_tokens_per_query": image_tokens(images, processor) // queries,
        "largest_image": f"{sizes[0][0]}x{sizes[0][1]}",
    }


# ---------------------------------------------------------------------------- main
def backend_spec(args, folder: Path) -> dict:
    from cir.testing.lm import tiny_chat_vlm

    model = tiny_chat_vlm(folder / "vlm")
    if args.backend == "transformers":
        return {"backend": "transformers", "model": model, "batch_size": args.batch}
    from cir.testing.lm import VLLM_CPU_ENGINE

    # room for a 256-token answer after a ~950-token listwise prompt: the tiny model's config
    # names 1024 positions, but its rotary embeddings work past them
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    engine = {**VLLM_CPU_ENGINE, "max_model_len": 2048, "kv_cache_memory_bytes": 128 * 2**20}
    limit = {"image": args.top_n + 1}
    return {"backend": "vllm", "model": model, "limit_mm_per_prompt": limit, **engine}


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [" | ".join(keys), " | ".join("---" for _ in keys)]
    lines += [" | ".join(str(row[k]) for k in keys) for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--top-n", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=None, help="one answer length for all")
    parser.add_argument("--batch", type=int, default=64, help="transformers requests per call")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "small").mkdir()
        small = gallery(folder / "small", 60, (160, 120))
        reference = Image.new("RGB", (160, 120), (90, 140, 200))
        spec = backend_spec(args, folder)
        resources = Resources()
        speed = []
        for mode in args.modes:
            speed.append(throughput(mode, spec, small, reference, args, resources))
            print(speed[-1], flush=True)
        print(f"\nthroughput ({args.backend}, tiny Qwen2-VL, {args.queries} queries)\n")
        print(table(speed))
        costs = []
        if not args.skip_cost:
            from transformers import Qwen2VLImageProcessor

            (folder / "photos").mkdir()
            photos = gallery(folder / "photos", 60, (640, 480))
            big_reference = Image.new("RGB", (640, 480), (90, 140, 200))
            processor = Qwen2VLImageProcessor()
            costs = [cost(m, n, photos, big_reference, processor) for n in (10, 50) for m in MODES]
            print("\ncost per query (Qwen2-VL image processor, default stage settings)\n")
            print(table(costs))
        resources.clear()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("rerank.json" if args.backend == "transformers" else "rerank_vllm.json")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, no GPU"
    payload = {"machine": machine, "args": vars(args), "throughput": speed, "cost": costs}
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
