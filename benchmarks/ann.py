"""IVF-PQ with exact rescoring against exact search, on a clustered synthetic gallery.

The gallery (default 2M x 768, fp16) is drawn chunk by chunk around 4,096 centres with CLIP-like
spread (``cir.testing.galleries``: mean cosine about 0.5 between unrelated rows). It is saved as
a cir index, the IVF-PQ index is built for a budget of 1/8 of the fp16 rows (``cir index ann``'s
code path) and loaded memory-mapped. Queries lie near gallery rows.

For each setting (nprobe, rescore) it reports, at batch 1 and k = 50: queries/s, the speed-up
over exact search of the same index (``GalleryIndex.search`` on this machine's fastest exact
path) and the top-50 agreement with exact search. Targets: agreement >= 0.95 at >= 10x the
exact queries/s, with the index <= 1/8 of the fp16 rows.

Usage:
    OMP_WAIT_POLICY=PASSIVE nice python benchmarks/ann.py --dir /tmp/ann   # 2M x 768
    OMP_WAIT_POLICY=PASSIVE python benchmarks/ann.py --dir /tmp/ann --reuse  # time searches again
    python benchmarks/ann.py --rows 200000 --dim 256                    # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from cir.index import GalleryIndex
from cir.index.ann import build_ivfpq
from cir.index.compute import this_machine
from cir.testing.galleries import clustered_queries, clustered_rows

K = 50
RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ((8, 100), (16, 200), (32, 500), (64, 1000))
CHUNK = 100_000


def make_index(folder: Path, rows: int, dim: int, centres: int) -> torch.Tensor:
    """Draw the gallery in chunks, save it as an index; returns the rows (fp16)."""
    x = torch.empty(rows, dim, dtype=torch.float16)
    for start in range(0, rows, CHUNK):
        stop = min(rows, start + CHUNK)
        x[start:stop] = clustered_rows(stop - start, dim, centres, seed=0, start=start)
    ids = [f"img{i:08d}" for i in range(rows)]
    GalleryIndex.from_embeddings(ids, x, normalize=False).save(folder)
    return x


def per_query(fn, queries: torch.Tensor) -> tuple[list, float]:
    """Run ``fn`` on each query alone; returns the rankings and queries per second."""
    out = []
    started = time.perf_counter()
    for q in queries:
        out.append(fn(q[None])[0])
    return out, len(queries) / (time.perf_counter() - started)


def agreement(exact: list, approx: list) -> float:
    hits = sum(len(set(a.ids) & set(b.ids)) for a, b in zip(exact, approx, strict=True))
    return hits / (K * len(exact))


def prepare(args, folder: Path) -> tuple[dict, dict]:
    """Make the gallery and its IVF-PQ index (or reuse those of an earlier run)."""
    meta_file = folder / "ann-ivfpq.json"
    if args.reuse and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        return meta["sizing"], {"build_ivfpq": meta["seconds"], "reused": True}
    t0 = time.perf_counter()
    x = make_index(folder, args.rows, args.dim, args.centres)
    made = time.perf_counter() - t0
    del x
    t0 = time.perf_counter()
    sizing = build_ivfpq(folder, args.rows * args.dim * 2 // 8)
    built = time.perf_counter() - t0
    return sizing.to_dict(), {"make_gallery": round(made, 1), "build_ivfpq": round(built, 1)}


def run(args) -> dict:
    folder = Path(args.dir or tempfile.mkdtemp(prefix="cir-ann-")) / "gallery"
    sizing, seconds = prepare(args, folder)
    fp16_bytes = args.rows * args.dim * 2
    budget = fp16_bytes // 8
    ann_file = next(folder.glob("ann-ivfpq.*.faiss"))
    index = GalleryIndex.load(folder)
    queries = clustered_queries(index.embeddings, args.queries, seed=7)
    truth = index.search(queries, k=K)  # batched: the reference rankings
    exact_q = queries[: args.exact_queries]
    _, exact_qps = per_query(lambda q: index.search(q, k=K), exact_q)
    rows = []
    for nprobe, rescore in SETTINGS:
        index.use_backend("ivfpq", nprobe=nprobe, rescore=rescore)
        per_query(lambda q: index.search(q, k=K), queries[:5])  # page in the lists
        found, qps = per_query(lambda q: index.search(q, k=K), queries)
        rows.append(
            {
                "nprobe": nprobe,
                "rescore": rescore,
                "queries_per_s": round(qps, 1),
                "speedup": round(qps / exact_qps, 1),
                "agreement_top50": round(agreement(truth, found), 4),
            }
        )
    return {
        "gallery": {"rows": args.rows, "dim": args.dim, "centres": args.centres},
        "fp16_rows_bytes": fp16_bytes,
        "budget_bytes": budget,
        "sizing": sizing,
        "index_file_bytes": ann_file.stat().st_size,
        "index_over_fp16": round(ann_file.stat().st_size / fp16_bytes, 4),
        "seconds": seconds,
        "exact": {"queries_per_s": round(exact_qps, 2), "compute": index.compute_plan.describe()},
        "queries": args.queries,
        "settings": rows,
    }


def print_table(doc: dict) -> None:
    g = doc["gallery"]
    print(f"gallery {g['rows']} x {g['dim']} ({g['centres']} centres), k={K}, batch 1")
    print(f"index {doc['sizing']['factory']}: {doc['index_file_bytes'] / 1e6:.1f} MB on disk, "
          f"{doc['index_over_fp16']:.3f} of the fp16 rows (budget 0.125)")  # fmt: skip
    print(f"exact search: {doc['exact']['queries_per_s']} q/s ({doc['exact']['compute']})")
    print(f"{'nprobe':>7} {'rescore':>8} {'q/s':>9} {'speed-up':>9} {'top-50 agreement':>17}")
    for r in doc["settings"]:
        print(f"{r['nprobe']:>7} {r['rescore']:>8} {r['queries_per_s']:>9} "
              f"{r['speedup']:>8}x {r['agreement_top50']:>17}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--centres", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=20)
    parser.add_argument("--dir", default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--out", default=str(RESULTS / "ann.json"))
    parser.add_argument(
        "--reuse", action="store_true", help="Reuse the gallery and index of --dir if present."
    )
    args = parser.parse_args()
    doc = run(args)
    machine = this_machine("cpu")
    doc["machine"] = {**machine.to_dict(), "platform": platform.platform()}
    print_table(doc)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
