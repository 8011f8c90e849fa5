"""milvus-lite beside the exact index, on a clustered synthetic gallery (default 200k x 768).

The gallery (``cir.testing.galleries``, as in ``benchmarks/ann.py``) is exported to a milvus-lite
file with ``export_milvus`` (IVF_FLAT, inner product) and searched through the ``milvus:`` backend
(hits rescored exactly from the index's rows). At batch 1 and k = 50 it reports queries/s and
top-50 agreement with exact search for a few nprobe settings, and the export time.

Usage:
    OMP_WAIT_POLICY=PASSIVE nice python benchmarks/milvus.py             # ~5 min on 2 cores
    python benchmarks/milvus.py --rows 20000 --dim 128                    # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from ann import K, agreement, per_query  # the same timing and agreement as benchmarks/ann.py

from cir.index import GalleryIndex
from cir.index.compute import this_machine
from cir.index.milvus import export_milvus
from cir.testing.galleries import clustered_queries, clustered_rows

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ((8, 100), (32, 200), (128, 500))


def run(args) -> dict:
    rows = clustered_rows(args.rows, args.dim, args.centres, seed=0)
    index = GalleryIndex.from_embeddings([f"img{i:07d}" for i in range(args.rows)], rows)
    queries = clustered_queries(rows, args.queries, seed=7)
    uri = str(Path(args.dir or tempfile.mkdtemp(prefix="cir-milvus-")) / "gallery.db")
    started = time.perf_counter()
    export_milvus(index, uri, replace=True)
    exported = time.perf_counter() - started
    truth = index.search(queries, k=K)
    search = lambda q: index.search(q, k=K)  # noqa: E731
    _, exact_qps = per_query(search, queries)
    table = []
    for nprobe, rescore in SETTINGS:
        index.use_backend(f"milvus:{uri}", nprobe=nprobe, rescore=rescore)
        per_query(search, queries[:5])
        found, qps = per_query(search, queries)
        table.append(
            {
                "nprobe": nprobe,
                "rescore": rescore,
                "queries_per_s": round(qps, 1),
                "vs_exact": round(qps / exact_qps, 2),
                "agreement_top50": round(agreement(truth, found), 4),
            }
        )
        index.backend = None
    return {
        "gallery": {"rows": args.rows, "dim": args.dim, "centres": args.centres},
        "milvus_index": "IVF_FLAT (inner product), milvus-lite",
        "export_seconds": round(exported, 1),
        "exact": {"queries_per_s": round(exact_qps, 1), "compute": index.compute_plan.describe()},
        "queries": args.queries,
        "settings": table,
    }


def print_table(doc: dict) -> None:
    g = doc["gallery"]
    print(f"gallery {g['rows']} x {g['dim']}, k={K}, batch 1; export {doc['export_seconds']} s")
    print(f"exact index: {doc['exact']['queries_per_s']} q/s ({doc['exact']['compute']})")
    print(f"{'nprobe':>7} {'rescore':>8} {'q/s':>8} {'vs exact':>9} {'top-50 agreement':>17}")
    for r in doc["settings"]:
        print(f"{r['nprobe']:>7} {r['rescore']:>8} {r['queries_per_s']:>8} "
              f"{r['vs_exact']:>8}x {r['agreement_top50']:>17}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--centres", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--out", default=str(RESULTS / "milvus.json"))
    args = parser.parse_args()
    doc = run(args)
    doc["machine"] = {**this_machine("cpu").to_dict(), "platform": platform.platform()}
    print_table(doc)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
