"""How fast does `cir bench evaluate` score full validation splits?

Target (issue 5): the full CIRR val (4,181 queries, recall + recall_subset files) and all three
FashionIQ val categories (6,016 queries) each in under 2 seconds. Prediction files in the official
formats are generated from the real annotation files (random top-50 rankings over the real
galleries, so every id is checked against the gallery); they are then scored

- in process (``evaluate_files``: read, validate and score; best of ``--repeat`` runs), and
- end to end, as a user runs it (``cir bench evaluate ... --json`` in a new process), with
  the bare start-up of a process that imports ``cir.cli`` measured separately.

Results: a table on stdout and ``benchmarks/results/evaluate.json``.

Usage:
    python benchmarks/evaluate.py            # about 1 minute on 2 cores
    python benchmarks/evaluate.py --repeat 10 --gallery 2000

A last section runs ``cir bench run`` twice on a miniature CIRR split (the first run builds the
gallery index, the second loads it) and reports both times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cir.bench.datasets import CIRCO, CIRR, FashionIQ
from cir.bench.evaluate import evaluate_files
from cir.bench.metrics import subset_ranking

RESULTS = Path(__file__).resolve().parent / "results"
ANNOTATIONS = Path(
    os.environ.get("CIR_BENCHMARKS_ROOT", Path(__file__).resolve().parents[2] / "shared/benchmarks")
)
CLI = [str(Path(sys.executable).parent / "cir")]


def cirr_files(out: Path, rng: random.Random) -> list[Path]:
    ds = CIRR(ANNOTATIONS / "cirr")
    names = ds.gallery_names("val")
    full = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for q in ds.queries("val"):
        ranked = [n for n in rng.sample(names, 120) if n != q.reference_id]
        ranked += [m for m in q.extras["group_members"] if m not in ranked and m != q.reference_id]
        full[q.id], subset[q.id] = ranked[:50], subset_ranking(ranked, q)
    return [_dump(out / "cirr_recall.json", full), _dump(out / "cirr_subset.json", subset)]


def fashioniq_files(out: Path, rng: random.Random) -> list[Path]:
    ds = FashionIQ(ANNOTATIONS / "fashioniq")
    files = []
    for category in ds.categories:
        names = ds.gallery_names(category, "val")
        preds = {q.id: rng.sample(names, 50) for q in ds.category_queries(category, "val")}
        files.append(_dump(out / f"fashioniq_{category}.json", preds))
    return files


def circo_files(out: Path, rng: random.Random) -> list[Path]:
    queries = CIRCO(ANNOTATIONS / "circo").queries("val")
    preds = {q.id: [int(i) for i in q.extras["gt_ids"]] for q in queries}
    for ranked in preds.values():
        ranked += rng.sample(range(1, 10**6), 50 - len(ranked))
    return [_dump(out / "circo.json", preds)]


def _dump(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def in_process(dataset: str, files: list[Path], repeat: int) -> tuple[float, float, int]:
    """Best wall-clock and CPU seconds of ``repeat`` evaluations, and the queries scored."""
    best, best_cpu, n = float("inf"), float("inf"), 0
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        result = evaluate_files(dataset, "val", ANNOTATIONS / dataset, files)
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        n = result.n_queries
    return best, best_cpu, n


def end_to_end(dataset: str, files: list[Path]) -> float:
    args = [*CLI, "bench", "evaluate", dataset, "--data-root", str(ANNOTATIONS / dataset)]
    for f in files:
        args += ["--predictions", str(f)]
    started = time.perf_counter()
    done = subprocess.run([*args, "--json"], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    json.loads(done.stdout)  # stdout is exactly one JSON object
    return seconds


def index_reuse(tmp: Path, gallery: int) -> list[dict]:
    """Two ``bench run`` of CIRR val on a miniature split (tiny CLIP, placeholder images):
    the first builds the gallery index, the second must load it."""
    from cir.bench.placeholders import make_miniature
    from cir.bench.runner import run_benchmark
    from cir.testing.clip import tiny_open_clip

    root = make_miniature(
        "cirr", ANNOTATIONS / "cirr", tmp / "cirr", n_queries=20, distractors=gallery,
        splits=("val",),
    )  # fmt: skip
    spec = tiny_open_clip(tmp / "clip")
    rows = []
    for attempt in ("first", "second"):
        result = run_benchmark(
            "cirr", "val", data_root=root, pipeline="clip_fusion", encoder=spec,
            out_dir=tmp / attempt, cache_dir=tmp / "cache", progress=False,
        )  # fmt: skip
        info = result.manifest["indexes"]["cirr"]
        rows.append({
            "run": attempt,
            "gallery_images": info["images"],
            "index_reused": info["reused"],
            "index_s": info["seconds"],
            "run_s": result.manifest["seconds"],
            "cache_hit_rate": result.manifest["trace_totals"]["cache_hit_rate"],
        })  # fmt: skip
    return rows


def startup() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cir.cli"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="in-process runs (best is kept)")
    parser.add_argument(
        "--gallery", type=int, default=500, help="distractor images of the index-reuse run"
    )
    args = parser.parse_args()
    rng = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for dataset, make in (("cirr", cirr_files), ("fashioniq", fashioniq_files),
                              ("circo", circo_files)):  # fmt: skip
            files = make(out, rng)
            seconds, cpu, n = in_process(dataset, files, args.repeat)
            rows.append({
                "dataset": dataset,
                "queries": n,
                "files": len(files),
                "mb": round(sum(f.stat().st_size for f in files) / 1e6, 2),
                "in_process_s": round(seconds, 3),
                "in_process_cpu_s": round(cpu, 3),
                "cli_s": round(end_to_end(dataset, files), 3),
            })  # fmt: skip
        reuse = index_reuse(out, args.gallery)
    boot = round(startup(), 3)
    load = round(os.getloadavg()[0], 2)
    header = (
        f"{'dataset':<10} {'queries':>7} {'files':>5} {'MB':>6} {'in-process s':>12} "
        f"{'(CPU s)':>8} {'CLI s':>7}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['dataset']:<10} {r['queries']:>7} {r['files']:>5} {r['mb']:>6} "
            f"{r['in_process_s']:>12} {r['in_process_cpu_s']:>8} {r['cli_s']:>7}"
        )
    print(f"python -c 'import cir.cli' alone: {boot} s (load average {load})")
    print("\nindex reuse (CIRR val miniature, tiny CLIP):")
    for r in reuse:
        print(
            f"  {r['run']:<6} {r['gallery_images']} images  reused={r['index_reused']}  "
            f"index {r['index_s']} s  run {r['run_s']} s  cache hit rate {r['cache_hit_rate']}"
        )
    RESULTS.mkdir(exist_ok=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_1min": load,
        "repeat": args.repeat,
        "rows": rows,
        "import_cir_cli_s": boot,
        "index_reuse": reuse,
    }
    (RESULTS / "evaluate.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
