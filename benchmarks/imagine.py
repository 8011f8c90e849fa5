"""Picture generation throughput: the ``imagine`` stage drawing in batches versus one at a time.

Both tiny diffusers pipelines of ``cir.testing.diffusion`` (random weights, the real
``from_pretrained`` and denoising path): the InstructPix2Pix-style editor editing photos, and the
text-to-image pipeline drawing captions. Each round draws the same pictures with
``batch_size: 1`` and with ``batch_size: B``, without a cache (every picture is drawn); rounds
alternate the two and the best round of each is kept. The largest difference between a
picture drawn alone and in a batch is reported (0-255 scale; batched kernels round differently).

Usage:
    python benchmarks/imagine.py [--pictures 16] [--batch-size 8] [--steps 10] [--side 64]

Prints a table and writes benchmarks/results/imagine.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cir.context import Context
from cir.resources import Resources
from cir.stages.imagine import Imagine
from cir.testing.diffusion import tiny_instruct_pix2pix, tiny_text_to_image

RESULTS = Path(__file__).resolve().parent / "results" / "imagine.json"
SHADES = ["red", "green", "blue", "yellow", "purple", "orange", "grey", "white"]


def jobs(task: str, count: int, side: int) -> tuple[list[str], list]:
    texts = [f"make the {SHADES[i % 8]} thing shine (variant {i})" for i in range(count)]
    if task == "text":
        return texts, [None] * count
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in texts]
    return texts, photos


def timed(stage: Imagine, texts: list[str], images: list, ctx: Context) -> tuple[float, list]:
    start = time.perf_counter()
    drawn = stage.draw_pictures(texts, images, ctx)
    return time.perf_counter() - start, [np.asarray(d.image) for d in drawn]


def bench(task: str, model: str, args: argparse.Namespace) -> dict:
    settings = {"task": task, "generator": {"model": model}, "steps": args.steps}
    if task == "text":
        settings |= {"width": args.side, "height": args.side}
    one = Imagine(batch_size=1, **settings)
    many = Imagine(batch_size=args.batch_size, **settings)
    ctx = Context(resources=Resources())
    texts, images = jobs(task, args.pictures, args.side)
    timed(many, texts[:2], images[:2], ctx)  # warm-up (and load, shared by both stages)
    best = {"one_by_one_s": float("inf"), "batched_s": float("inf")}
    for _ in range(args.rounds):
        alone, first = timed(one, texts, images, ctx)
        batched, second = timed(many, texts, images, ctx)
        best["one_by_one_s"] = min(best["one_by_one_s"], alone)
        best["batched_s"] = min(best["batched_s"], batched)
    diff = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(first, second, strict=True))
    return {**best, "max_pixel_difference": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--side", type=int, default=64, help="picture side in pixels")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            "edit (tiny InstructPix2Pix)": bench(
                "edit", tiny_instruct_pix2pix(Path(tmp) / "editor"), args
            ),
            "text (tiny Stable Diffusion)": bench(
                "text", tiny_text_to_image(Path(tmp) / "drawer"), args
            ),
        }
    print(f"{args.pictures} pictures of {args.side}x{args.side}, {args.steps} steps, no cache")
    print(f"{'task':<30} {'one-by-one pic/s':>17} {'batch ' + str(args.batch_size) + ' pic/s':>14} "
          f"{'speed-up':>9} {'max diff':>9}")  # fmt: skip
    for name, row in rows.items():
        row["one_by_one_per_s"] = args.pictures / row["one_by_one_s"]
        row["batched_per_s"] = args.pictures / row["batched_s"]
        row["speedup"] = row["one_by_one_s"] / row["batched_s"]
        print(f"{name:<30} {row['one_by_one_per_s']:>17.1f} {row['batched_per_s']:>14.1f} "
              f"{row['speedup']:>8.2f}x {row['max_pixel_difference']:>9}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"threads": torch.get_num_threads(), "machine": platform.machine()}
    RESULTS.write_text(json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
