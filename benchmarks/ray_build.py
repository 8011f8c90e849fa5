"""Gallery build on Ray with one encoder actor vs the local build, on the same images.

Both builds encode the same generated JPEG photos with the same model, batch size and shard size;
the local build decodes in one DataLoader worker process, the Ray build in Ray tasks beside one
encoder actor. Both models run with the same number of threads (``OMP_NUM_THREADS``, 2 by
default). The Ray build's time includes what the engine adds: planning the dataset, starting the
actor and loading the model in it, moving decoded pixels through the object store. The local
Ray cluster is started once beforehand (its start-up is reported apart). The two indexes must be
identical (same ids, the same fp16 rows bit for bit). Target: Ray at ≥ 85% of the local rate.

Builds alternate (local, Ray, local, Ray, ...); the ratio is the median of the per-pair ratios.

Usage:
    python benchmarks/ray_build.py                     # 256 images 640x480, random ViT-B-32
    python benchmarks/ray_build.py --images 512 --repeat 3 --arch ViT-B-16

Prints a table and writes benchmarks/results/ray_build.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch: the same threads on both sides

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from index_build import make_gallery, random_vit

from cir.index import GalleryIndex
from cir.models import load_encoder

RESULTS = Path(__file__).resolve().parent / "results" / "ray_build.json"


def timed_build(encoder, folder: Path, out: Path, options: dict) -> tuple[float, GalleryIndex]:
    start = time.perf_counter()
    index = GalleryIndex.build(folder, encoder, out=out, progress=False, **options)
    return time.perf_counter() - start, index


def same(a: GalleryIndex, b: GalleryIndex) -> bool:
    return a.ids == b.ids and torch.equal(a.embeddings, b.embeddings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="encoder spec (default: a random --arch)")
    ap.add_argument("--arch", default="ViT-B-32", help="architecture of the random model")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", default="640x480", help="WxH of generated photos")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2, help="(local, Ray) pairs")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = ap.parse_args()

    import ray

    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = args.model or random_vit(root / "model", args.arch)
        make_gallery(root / "photos", args.images, (w, h))
        encoder = load_encoder(spec)
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        sizes = {"batch_size": args.batch_size, "shard_size": args.shard_size}
        local_opts, ray_opts = {**sizes, "num_workers": 1}, {**sizes, "ray": True, "ray_workers": 1}
        make_gallery(root / "one", 1, (w, h))  # fixed costs: a build of a single image
        local_one, _ = timed_build(encoder, root / "one", root / "local_one", local_opts)
        ray_one, _ = timed_build(encoder, root / "one", root / "ray_one", ray_opts)
        local_s, ray_s, identical = [], [], []
        for n in range(args.repeat):
            t_local, local = timed_build(encoder, root / "photos", root / f"local{n}", local_opts)
            t_ray, on_ray = timed_build(encoder, root / "photos", root / f"ray{n}", ray_opts)
            local_s.append(t_local)
            ray_s.append(t_ray)
            identical.append(same(local, on_ray))
        ray.shutdown()
    ratios = [lo / r for lo, r in zip(local_s, ray_s, strict=True)]
    steady = [(lo - local_one) / (r - ray_one) for lo, r in zip(local_s, ray_s, strict=True)]
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": spec if args.model else f"random {args.arch} (open_clip, local-dir)",
        "images": args.images,
        "size": args.size,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "omp_threads": os.environ["OMP_NUM_THREADS"],
        "ray_version": ray.__version__,
        "ray_cluster_start_s": round(ray_start, 2),
        "local_s": [round(t, 2) for t in local_s],
        "ray_s": [round(t, 2) for t in ray_s],
        "local_images_per_s": round(args.images / statistics.median(local_s), 2),
        "ray_images_per_s": round(args.images / statistics.median(ray_s), 2),
        "ratio_per_pair": [round(r, 3) for r in ratios],
        "ratio": round(statistics.median(ratios), 3),
        "one_image_build_s": {"local": round(local_one, 2), "ray": round(ray_one, 2)},
        "ratio_without_fixed_costs": round(statistics.median(steady), 3),
        "identical": all(identical),
    }
    rows = [
        ("local build, 1 decode worker", result["local_images_per_s"], "100%"),
        ("Ray build, 1 encoder actor", result["ray_images_per_s"], f"{result['ratio']:.0%}"),
    ]
    print(f"{'setup':34} {'images/s':>9} {'vs local':>9}")
    for name, rate, share in rows:
        print(f"{name:34} {rate:9.2f} {share:>9}")
    print(f"identical output: {result['identical']}; Ray cluster start {ray_start:.1f} s")
    print(
        f"a one-image build: local {local_one:.1f} s, Ray {ray_one:.1f} s (actor start, model "
        f"load); ratio without these fixed costs {result['ratio_without_fixed_costs']:.0%}"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
