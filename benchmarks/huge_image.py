"""Peak memory and time of decoding a huge image for an encoder that needs ~224 pixels.

A 12000 x 12000 (144-megapixel) PNG and JPEG, just under the default pixel limit, are decoded
in a fresh process each: at full size (``load_image(path)``) and at the size a 224-pixel encoder
needs (``load_image(path, min_side=448)``, what index builds use). The peak resident memory of
each process above its size just before decoding (Linux: the peak is reset through
``/proc/self/clear_refs``) and the decode time are reported.

Usage:
    python benchmarks/huge_image.py            # 12000 x 12000
    python benchmarks/huge_image.py --side 8000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
_PROBE = """
import gc, json, sys, time
from pathlib import Path
from cir.images import load_image

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024

path, min_side = sys.argv[1], int(sys.argv[2])
gc.collect()
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
base = status("VmRSS")
started = time.perf_counter()
image = load_image(path, min_side=min_side or None)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "extra_mib": status("VmHWM") - base,
                  "size": list(image.size)}))
"""


def make_images(folder: Path, side: int) -> dict[str, Path]:
    """A smooth colour picture (compresses well, like a photo's large flat areas) as PNG/JPEG."""
    tile = np.random.default_rng(0).integers(0, 255, (side // 250, side // 250, 3), np.uint8)
    image = Image.fromarray(tile).resize((side, side), Image.Resampling.BILINEAR)
    paths = {"png": folder / "huge.png", "jpeg": folder / "huge.jpg"}
    image.save(paths["png"], compress_level=1)
    image.save(paths["jpeg"], quality=90)
    return paths


def probe(path: Path, min_side: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(min_side)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, path in make_images(Path(tmp), args.side).items():
            full, reduced = probe(path, 0), probe(path, 448)
            rows.append({
                "format": fmt, "pixels": args.side**2,
                "full_mib": round(full["extra_mib"]), "full_s": round(full["seconds"], 2),
                "reduced_mib": round(reduced["extra_mib"]),
                "reduced_s": round(reduced["seconds"], 2),
                "reduced_size": reduced["size"],
                "memory_ratio": round(full["extra_mib"] / max(reduced["extra_mib"], 1), 1),
            })  # fmt: skip
    print(f"{'format':<6} {'full MiB':>9} {'full s':>7} {'min_side MiB':>13} {'s':>6} {'ratio':>6}")
    for r in rows:
        print(f"{r['format']:<6} {r['full_mib']:>9} {r['full_s']:>7} {r['reduced_mib']:>13} "
              f"{r['reduced_s']:>6} {r['memory_ratio']:>5}x")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": "x86_64, 2 cores, no GPU", "side": args.side, "rows": rows}
    (RESULTS / "huge_image.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
