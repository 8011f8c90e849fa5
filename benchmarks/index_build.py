"""Gallery build throughput: ``GalleryIndex.build`` with DataLoader workers vs the model alone.

The model alone encodes images that were decoded and preprocessed beforehand (the ceiling a
build can reach); the build decodes JPEG files in worker processes, encodes, writes shards and
saves the index. Target: the build reaches at least 90% of the model-alone rate. Each build is
paired with a model-alone run just before it, and the medians over rounds are reported (the
ratio is the median of the per-pair ratios), which keeps load from other jobs out of the ratio.

Without downloadable weights the default model is an open_clip ViT-B-32 with random weights,
saved to a temporary folder and loaded through ``local-dir:`` (same compute as the real one).
The gallery is generated: smooth random colour photos saved as JPEG (quality 90).

Usage:
    python benchmarks/index_build.py                          # 128 images 640x480, ViT-B-32
    python benchmarks/index_build.py --images 1000 --workers 0,1,2,3
    python benchmarks/index_build.py --model ViT-L-14/openai  # a real model, where it downloads
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cir.images import load_image
from cir.index import GalleryIndex
from cir.models import load_encoder

RESULTS = Path(__file__).resolve().parent / "results"


def random_vit(directory: Path, arch: str) -> str:
    """An open_clip ``arch`` with random weights saved as a local-dir model; returns its spec."""
    import open_clip
    from safetensors.torch import save_file

    cfg = open_clip.get_model_config(arch)
    model = open_clip.create_model(arch)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "open_clip_model.safetensors"))
    pre = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": pre})
    )
    return f"local-dir:{directory}"


def make_gallery(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """Smooth random colour images (upsampled noise plus gradients), saved as JPEG."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    w, h = size
    ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(0, 1, h)[:, None, None]
    for i in range(n):
        low = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) * 0.8 + ramp * 50 + rng.normal(0, 6, (h, w, 3))
        path = folder / f"photo_{i:05d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def model_alone(encoder, paths: list[Path], batch_size: int) -> float:
    """Images per second of ``encode_pixels`` on tensors decoded beforehand."""
    pixels = torch.stack([encoder.preprocess(load_image(p)) for p in paths])
    encoder.encode_pixels(pixels[:batch_size])  # warm-up
    start = time.perf_counter()
    for s in range(0, len(pixels), batch_size):
        encoder.encode_pixels(pixels[s : s + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def full_build(encoder, folder: Path, batch_size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        idx = GalleryIndex.build(
            folder, encoder, out=out, batch_size=batch_size, num_workers=workers, progress=False
        )
        elapsed = time.perf_counter() - start
    return len(idx) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="encoder spec (default: random ViT-B-32)")
    ap.add_argument("--arch", default="ViT-B-32", help="architecture of the random model")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--size", default="640x480", help="WxH of generated photos")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="0,1,2", help="worker counts to try")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of (model alone, build) pairs")
    ap.add_argument("--out", type=Path, default=RESULTS / "index_build.json")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model or random_vit(Path(tmp) / "model", args.arch)
        encoder = load_encoder(spec, device="cpu")
        paths = make_gallery(Path(tmp) / "gallery", args.images, size)
        workers = [int(v) for v in args.workers.split(",")]
        alone, pairs = [], {w: [] for w in workers}
        for r in range(args.repeat):  # each build is paired with a model-alone run just before
            for w in workers:
                ceiling = model_alone(encoder, paths, args.batch_size)
                rate = full_build(encoder, Path(tmp) / "gallery", args.batch_size, w)
                alone.append(ceiling)
                pairs[w].append((rate, rate / ceiling))
                print(
                    f"round {r + 1}, {w} workers: build {rate:.1f} images/s, model alone "
                    f"{ceiling:.1f} images/s ({rate / ceiling:.0%})",
                    flush=True,
                )
        rows = [
            {
                "setup": "model alone (pre-decoded)",
                "workers": "-",
                "img/s": statistics.median(alone),
                "ratio": 1.0,
            }
        ]
        rows += [
            {
                "setup": "GalleryIndex.build",
                "workers": w,
                "img/s": statistics.median(r for r, _ in v),
                "ratio": statistics.median(x for _, x in v),
            }
            for w, v in pairs.items()
        ]
    print()
    print(f"{'setup':<28}{'workers':>8}{'images/s':>10}{'vs model':>10}")
    for r in rows:
        print(f"{r['setup']:<28}{r['workers']!s:>8}{r['img/s']:>10.1f}{r['ratio']:>10.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.is_available(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    args.out.write_text(
        json.dumps(
            {
                "machine": machine,
                "model": args.model or f"random {args.arch}",
                "images": args.images,
                "size": args.size,
                "batch_size": args.batch_size,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
