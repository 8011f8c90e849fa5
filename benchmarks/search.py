"""Exact search throughput of GalleryIndex against the bare product, full argsort and faiss.

For each gallery size and query batch (k = 50) it times:

- ``floor``: a bare fp32 product and ``torch.topk`` over an fp32 copy of the gallery (4 bytes per
  value; queries in blocks so the score matrix stays under 1 GiB);
- ``cir``: ``GalleryIndex.search`` over fp16 storage (2 bytes per value), what users get;
- ``cir-upcast``: the fp32-upcast path of ``GalleryIndex.topk`` (used by scoring rules, and by
  search on CPUs without fp16 arithmetic);
- ``argsort``: the published reference approach, full similarity matrix then a full ``argsort``
  per query (timed on at most ``--argsort-queries`` queries of a batch);
- ``faiss``: faiss ``IndexFlatIP`` (fp32) with the BLAS threshold set low, and
  ``faiss-default`` with faiss's default threshold (shows the small-batch pitfall).

It also reports the top-50 agreement of ``cir`` with exact fp32 search, and the resident memory
of a saved index after loading it and searching (measured in a fresh process).

Gallery vectors are synthetic and share a common direction (mean cosine about 0.5, like CLIP
embeddings), which makes near-ties, and so reduced-precision ranking errors, more frequent than
with isotropic random vectors.

On a machine shared with other jobs, run it with ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP
threads then stop stealing time from each other, for every method alike.

Usage:
    python benchmarks/search.py                 # 100k x 512 (about 2 minutes on 2 cores)
    python benchmarks/search.py --full          # also 1M x 768 (needs about 12 GB of memory)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cir.index import GalleryIndex
from cir.index.faiss_backend import FaissSearcher, import_faiss
from cir.index.search import native_products

K = 50
RESULTS = Path(__file__).resolve().parent / "results"


def synthetic(n: int, d: int, seed: int, shared: float = 1.0) -> torch.Tensor:
    """Unit vectors around a common direction (generated in blocks to bound memory)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=torch.Generator().manual_seed(12345))
    common = common / common.norm() * (d**0.5) * shared
    out = torch.empty(n, d)
    for s in range(0, n, 65536):
        block = torch.randn(min(65536, n - s), d, generator=g) + common
        out[s : s + len(block)] = torch.nn.functional.normalize(block, dim=1)
    return out


def floor_search(x32: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    block = max(1, (1 << 28) // x32.shape[0])
    return torch.cat(
        [torch.topk(q[s : s + block] @ x32.T, k, dim=1).indices for s in range(0, len(q), block)]
    )


def argsort_search(x32: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    sims = q @ x32.T
    return torch.stack([torch.argsort(row, descending=True)[:k] for row in sims])


def time_rounds(methods: dict, chunks: list[torch.Tensor], budget: float, rounds: int) -> dict:
    """Best queries per second of each method over interleaved rounds.

    Methods take turns round after round, so a burst of load from other processes cannot favour
    one of them; the best round of each is kept. Each method gets about ``budget`` seconds.
    """
    calls, best = {}, {}
    for name, fn in methods.items():
        fn(chunks[0])  # warm-up
        start = time.perf_counter()
        fn(chunks[0])
        once = time.perf_counter() - start
        calls[name] = max(1, round(budget / rounds / once))
        best[name] = len(chunks[0]) / once
    for _ in range(rounds):
        for name, fn in methods.items():
            if len(chunks[0]) / best[name] > budget:
                continue  # one call takes longer than the budget: its timed warm-up must do
            start = time.perf_counter()
            for i in range(calls[name]):
                fn(chunks[i % len(chunks)])
            elapsed = time.perf_counter() - start
            best[name] = max(best[name], calls[name] * len(chunks[0]) / elapsed)
    return best


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    hits = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b, strict=True))
    return hits / b.numel()


def measure_memory(index_dir: str, dim: int) -> dict:
    """In a fresh process: resident memory added by loading the index and searching it."""
    code = f"""
import ctypes, gc, json, tempfile, torch
from cir.index import GalleryIndex

def rss():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed temporaries back to the system
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024

def use(idx):
    for s in range(0, len(idx), 65536):  # read every stored row once (pages of the mapped file)
        idx.embeddings[s : s + 65536].sum()

# warm-up on a tiny index, so the code of the libraries involved is resident before measuring
with tempfile.TemporaryDirectory() as tiny:
    GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, {dim})).save(tiny)
    use(GalleryIndex.load(tiny))
before = rss()
idx = GalleryIndex.load({index_dir!r})
loaded = rss()
use(idx)
resident = rss()
idx.search(torch.randn(100, {dim}), k=50)
print(json.dumps({{"load": loaded - before, "resident": resident - before,
                  "after_search": rss() - before,
                  "embedding_bytes": idx.embeddings.numel() * idx.embeddings.element_size()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_size(
    n: int, d: int, batches: list[int], budget: float, rounds: int, argsort_queries: int
) -> dict:
    print(f"\n== gallery {n:,} x {d}, fp16 storage, k={K} ==", flush=True)
    x32 = synthetic(n, d, seed=0)
    ids = [f"img{i:07d}" for i in range(n)]
    idx = GalleryIndex.from_embeddings(ids, x32, dtype="fp16", device="cpu")
    idx_bf16 = GalleryIndex.from_embeddings(ids, x32, dtype="bf16", device="cpu")
    queries = synthetic(max(batches), d, seed=1)
    faiss = import_faiss()
    flat = FaissSearcher(x32, "flat", gpu=False)
    default_threshold = 128000

    def faiss_default(q):
        faiss.cvar.distance_compute_blas_threshold = default_threshold
        try:
            flat.index.search(q.numpy(), K)
        finally:
            faiss.cvar.distance_compute_blas_threshold = 1

    methods = {
        "floor": lambda q: floor_search(x32, q, K),
        "cir": lambda q: idx.search(q, k=K),
        "cir-upcast": lambda q: idx.topk(lambda a, b, g: q @ g.T, len(q), k=K),
        "cir-bf16": lambda q: idx_bf16.search(q, k=K),
        "argsort": lambda q: argsort_search(x32, q[:argsort_queries], K),
        "faiss": lambda q: flat.index.search(q.numpy(), K),
        "faiss-default": faiss_default,
    }
    rows = []
    for b in batches:
        chunks = [queries[s : s + b] for s in range(0, len(queries), b)][: max(1, 64 // b)]
        timed = {m: fn for m, fn in methods.items() if not (m == "faiss-default" and b > 100)}
        for name, qps in time_rounds(timed, chunks, budget, rounds).items():
            if name == "argsort":  # timed on the first argsort_queries queries of the batch
                qps *= min(b, argsort_queries) / b
            rows.append({"n": n, "d": d, "batch": b, "method": name, "qps": qps})
            print(f"  batch {b:>5}  {name:<14} {qps:>10.1f} queries/s", flush=True)
    exact = floor_search(x32, queries, K)
    got = torch.stack(
        [torch.tensor([idx.position(i) for i in r.ids]) for r in idx.search(queries, k=K)]
    )
    got_bf16 = torch.stack(
        [torch.tensor([idx.position(i) for i in r.ids]) for r in idx_bf16.search(queries, k=K)]
    )
    iso = synthetic(n, d, seed=0, shared=0.0)
    iso_idx = GalleryIndex.from_embeddings(ids, iso, dtype="fp16", device="cpu")
    iso_q = synthetic(max(batches), d, seed=1, shared=0.0)
    iso_got = torch.stack(
        [torch.tensor([iso_idx.position(i) for i in r.ids]) for r in iso_idx.search(iso_q, k=K)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        idx.save(tmp)
        memory = measure_memory(tmp, d)
    result = {
        "rows": rows,
        "agreement_top50_vs_fp32": agreement(got, exact),
        "agreement_top50_vs_fp32_bf16_storage": agreement(got_bf16, exact),
        "agreement_top50_vs_fp32_isotropic": agreement(iso_got, floor_search(iso, iso_q, K)),
        "memory": memory,
        "memory_ratio": memory["resident"] / (n * d * 2),
        "memory_ratio_after_search": memory["after_search"] / (n * d * 2),
        "mean_cosine": float((x32[:1000] @ x32[1000:2000].T).mean()),
    }
    print(
        f"  top-50 agreement with exact fp32: {result['agreement_top50_vs_fp32']:.4f} "
        f"(isotropic vectors: {result['agreement_top50_vs_fp32_isotropic']:.4f})"
    )
    print(
        f"  index memory, loaded with every row read: {memory['resident'] / 2**20:.1f} MiB = "
        f"{result['memory_ratio']:.3f} x N x D x 2 bytes (after a search: "
        f"{result['memory_ratio_after_search']:.3f})"
    )
    return result


def summary_table(results: list[dict]) -> list[dict]:
    table = []
    for res in results:
        by = {(r["batch"], r["method"]): r["qps"] for r in res["rows"]}
        for b in sorted({r["batch"] for r in res["rows"]}):
            cir = by[(b, "cir")]
            table.append(
                {
                    "gallery": f"{res['rows'][0]['n']:,} x {res['rows'][0]['d']}",
                    "batch": b,
                    "cir q/s": round(cir, 1),
                    "floor q/s": round(by[(b, "floor")], 1),
                    "cir / floor": round(cir / by[(b, "floor")], 2),
                    "cir / argsort": round(cir / by[(b, "argsort")], 1),
                    "cir / faiss": round(cir / by[(b, "faiss")], 2),
                    "upcast / floor": round(by[(b, "cir-upcast")] / by[(b, "floor")], 2),
                    "bf16 / floor": round(by[(b, "cir-bf16")] / by[(b, "floor")], 2),
                }
            )
    return table


def merge_previous(path: Path, results: list[dict]) -> list[dict]:
    """Keep the results of other gallery sizes already in ``path`` (e.g. a 1M run made apart)."""
    if not path.is_file():
        return results
    size = lambda res: (res["rows"][0]["n"], res["rows"][0]["d"])  # noqa: E731
    fresh = {size(r) for r in results}
    old = [r for r in json.loads(path.read_text()).get("results", []) if size(r) not in fresh]
    return sorted(old + results, key=size)


def print_table(rows: list[dict]) -> None:
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[h]).rjust(w) for h, w in zip(headers, widths, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000x512", help="comma-separated NxD galleries")
    ap.add_argument("--full", action="store_true", help="add the 1,000,000 x 768 gallery")
    # results of sizes not run this time are kept in the output file
    ap.add_argument("--batches", default="1,100,1000")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds timed per cell")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per cell")
    ap.add_argument(
        "--argsort-queries",
        type=int,
        default=100,
        help="queries per batch timed for the (slow) full-argsort approach",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "search.json")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if args.full and (1_000_000, 768) not in sizes:
        sizes.append((1_000_000, 768))
    batches = [int(b) for b in args.batches.split(",")]
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.is_available(),
        "fp16_products_native": native_products(torch.float16, torch.device("cpu")),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    results = [
        bench_size(n, d, batches, args.budget, args.rounds, args.argsort_queries) for n, d in sizes
    ]
    print()
    print_table(summary_table(results))
    results = merge_previous(args.out, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine, "k": K, "summary": summary_table(results), "results": results}
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
