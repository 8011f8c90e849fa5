"""Exact search throughput of GalleryIndex against the best engines, on this machine's CPU (or GPU).

For each gallery size and query batch (k = 50) it times, in alternating rounds:

- ``floor``: a bare float32 product and ``torch.topk`` over a float32 copy of the gallery (4 bytes
  per value; queries in blocks so the score matrix stays under 1 GiB);
- ``faiss``: faiss ``IndexFlatIP`` over a float32 copy, with its BLAS threshold fixed;
- ``cir``: ``GalleryIndex.search`` over the saved fp16 index, loaded as users load it (2 bytes per
  value), on the compute path the index chose for this machine at load;
- ``cir-<path>``: the same with each compute path forced (``fp32``, ``fp16``, ``bf16``, ``faiss``);
- ``argsort`` (``--argsort``): the published reference approach, full similarity matrix then a
  full ``argsort`` per query (timed on at most 100 queries of a batch).

It also reports the top-50 agreement of every cir column with exact float32 search over the
original vectors, the resident memory of the loaded index (fresh process, every row read, then
after searches of each batch size), the CPU model and flags, the chosen compute plan and how long
its calibration took.

Gallery vectors are synthetic and share a common direction (mean cosine about 0.5, like CLIP
embeddings), which makes near-ties, and so reduced-precision ranking errors, more frequent than
with isotropic random vectors.

On a machine shared with other jobs, run it with ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP
threads then stop stealing time from each other, for every method alike.

Usage:
    python benchmarks/search.py                          # 100k x 512, about 4 minutes on 2 cores
    python benchmarks/search.py --sizes 1000000x768      # about 10 GB of memory
    python benchmarks/search.py --device cuda            # on a GPU machine (faiss-gpu if present)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cir.index import GalleryIndex
from cir.index.compute import PATHS, candidates, faiss_usable, resolve_plan, this_machine
from cir.index.faiss_backend import faiss_gpus, import_faiss

K = 50
RESULTS = Path(__file__).resolve().parent / "results"


def synthetic(n: int, d: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """Unit vectors around a common direction (generated in blocks to bound memory)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=torch.Generator().manual_seed(12345))
    common = common / common.norm() * d**0.5
    out = torch.empty(n, d, device=device)
    for s in range(0, n, 65536):
        block = torch.randn(min(65536, n - s), d, generator=g) + common
        out[s : s + len(block)] = torch.nn.functional.normalize(block, dim=1).to(device)
    return out


def floor_search(x32: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    block = max(1, (1 << 28) // x32.shape[0])
    parts = [
        torch.topk(q[s : s + block] @ x32.T, k, dim=1).indices for s in range(0, len(q), block)
    ]
    return torch.cat(parts)


def argsort_search(x32: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    sims = q[:100] @ x32.T
    return torch.stack([torch.argsort(row, descending=True)[:k] for row in sims])


def faiss_flat(x32: torch.Tensor):
    """faiss IndexFlatIP over a float32 copy (on the GPUs in CUDA mode)."""
    faiss = import_faiss()
    index = faiss.IndexFlatIP(x32.shape[1])
    index.add(x32.cpu().numpy())
    if x32.is_cuda:
        index = faiss.index_cpu_to_all_gpus(index)
    return lambda q: torch.from_numpy(index.search(q.cpu().numpy(), K)[1])


def cir_positions(idx: GalleryIndex, q: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[idx.position(i) for i in r.ids] for r in idx.search(q, k=K)])


def time_rounds(methods: dict, chunks: list[torch.Tensor], budget: float, rounds: int, sync):
    """Best queries per second of each method over interleaved rounds.

    Methods take turns round after round, so a burst of load from other processes cannot favour
    one of them; the best round of each is kept. Each method gets about ``budget`` seconds.
    """
    calls, best = {}, {}
    for name, fn in methods.items():
        fn(chunks[0])  # warm-up
        sync()
        start = time.perf_counter()
        fn(chunks[0])
        sync()
        once = time.perf_counter() - start
        calls[name] = max(1, round(budget / rounds / once))
        best[name] = len(chunks[0]) / once
    for _ in range(rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            for i in range(calls[name]):
                fn(chunks[i % len(chunks)])
            sync()
            elapsed = time.perf_counter() - start
            best[name] = max(best[name], calls[name] * len(chunks[0]) / elapsed)
    return best


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    hits = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b, strict=True))
    return hits / b.numel()


def measure_memory(index_dir: str, dim: int, batches: list[int]) -> dict:
    """In a fresh process: resident memory added by loading the index, reading it, searching."""
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

with tempfile.TemporaryDirectory() as tiny:  # libraries' code resident before measuring
    GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, {dim})).save(tiny)
    use(GalleryIndex.load(tiny))
before = rss()
idx = GalleryIndex.load({index_dir!r})
loaded = rss()
use(idx)
out = {{"load": loaded - before, "resident": rss() - before, "plan": idx.compute_plan.describe()}}
peak = 0
for b in {batches!r}:
    idx.search(torch.randn(b, {dim}), k=50)
    peak = max(peak, rss() - before)
out["after_search"] = peak
out["embedding_bytes"] = idx.embeddings.numel() * idx.embeddings.element_size()
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def forced_indexes(folder: str, device: str) -> dict[str, GalleryIndex]:
    """The saved index loaded with the automatic choice, and once per forced compute path."""
    out = {"cir": GalleryIndex.load(folder, device=device)}
    for path in PATHS:
        if path == "faiss" and not faiss_usable(torch.device(device)):
            continue
        out[f"cir-{path}"] = GalleryIndex.load(folder, device=device, compute=path)
    return out


def bench_size(n: int, d: int, args, folder: str) -> dict:
    device = args.device
    print(f"\n== gallery {n:,} x {d}, fp16 storage, k={K}, {device} ==", flush=True)
    x32 = synthetic(n, d, seed=0, device=device)
    ids = [f"img{i:07d}" for i in range(n)]
    GalleryIndex.from_embeddings(ids, x32, dtype="fp16", device="cpu").save(folder)
    started = time.perf_counter()
    plan = resolve_plan(torch.float16, d, n, torch.device(device), recalibrate=True)
    calibration = time.perf_counter() - started
    print(f"  compute plan: {plan.describe()}, calibrated in {calibration:.2f} s", flush=True)
    indexes = forced_indexes(folder, device)
    queries = synthetic(max(args.batches), d, seed=1, device=device)
    methods = {"floor": lambda q: floor_search(x32, q, K)}
    if device == "cpu" or faiss_gpus() > 0:  # faiss flat where faiss can run next to the rows
        methods["faiss"] = faiss_flat(x32)
    methods.update({name: (lambda q, i=idx: i.search(q, k=K)) for name, idx in indexes.items()})
    if args.argsort:
        methods["argsort"] = lambda q: argsort_search(x32, q, K)
    exact = floor_search(x32, queries, K).cpu()
    agree = {"faiss": agreement(methods["faiss"](queries), exact)} if "faiss" in methods else {}
    agree.update({m: agreement(cir_positions(i, queries), exact) for m, i in indexes.items()})
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    rows = []
    for b in args.batches:
        chunks = [queries[s : s + b] for s in range(0, len(queries), b)][: max(1, 64 // b)]
        for name, qps in time_rounds(methods, chunks, args.budget, args.rounds, sync).items():
            if name == "argsort":
                qps *= min(b, 100) / b  # timed on the first 100 queries of the batch
            path = indexes["cir"].compute_plan.path_for(b) if name == "cir" else None
            rows.append({"n": n, "d": d, "batch": b, "method": name, "qps": qps, "path": path})
            print(f"  batch {b:>5}  {name:<10} {qps:>10.1f} queries/s", flush=True)
    del methods, indexes
    memory = measure_memory(folder, d, args.batches) if device == "cpu" else None
    result = {
        "rows": rows,
        "agreement_top50_vs_fp32": agree,
        "plan": plan.describe(),
        "plan_seconds_per_query": plan.timings,
        "calibration_seconds": calibration,
        "memory": memory,
        "mean_cosine": float((x32[:1000] @ x32[1000:2000].T).mean()),
    }
    if memory:
        result["memory_ratio"] = memory["resident"] / (n * d * 2)
        result["memory_ratio_after_search"] = memory["after_search"] / (n * d * 2)
        print(f"  index memory {result['memory_ratio']:.3f} x N x D x 2 bytes loaded, "
              f"{result['memory_ratio_after_search']:.3f} after searches", flush=True)  # fmt: skip
    print("  top-50 agreement: " + ", ".join(f"{m} {a:.4f}" for m, a in agree.items()))
    return result


def summary_table(results: list[dict]) -> list[dict]:
    table = []
    for res in results:
        by = {(r["batch"], r["method"]): r for r in res["rows"]}
        n, d = res["rows"][0]["n"], res["rows"][0]["d"]
        for b in sorted({r["batch"] for r in res["rows"]}):
            engines = [by[(b, e)]["qps"] for e in ("floor", "faiss") if (b, e) in by]
            best = max(engines)
            row = {"gallery": f"{n:,} x {d}", "batch": b, "path": by[(b, "cir")]["path"]}
            row["cir q/s"] = round(by[(b, "cir")]["qps"], 1)
            row["floor q/s"] = round(by[(b, "floor")]["qps"], 1)
            if (b, "faiss") in by:
                row["faiss q/s"] = round(by[(b, "faiss")]["qps"], 1)
            row["cir / best"] = round(by[(b, "cir")]["qps"] / best, 2)
            for p in PATHS:
                if (b, f"cir-{p}") in by:
                    row[f"{p} / best"] = round(by[(b, f"cir-{p}")]["qps"] / best, 2)
            if (b, "argsort") in by:
                row["cir / argsort"] = round(by[(b, "cir")]["qps"] / by[(b, "argsort")]["qps"], 1)
            table.append(row)
    return table


def merge_previous(path: Path, results: list[dict], machine: dict) -> list[dict]:
    """Keep results of other gallery sizes already in ``path`` from the same machine."""
    if not path.is_file():
        return results
    old_doc = json.loads(path.read_text())
    if old_doc.get("machine", {}).get("cpu") != machine["cpu"]:
        return results
    size = lambda res: (res["rows"][0]["n"], res["rows"][0]["d"])  # noqa: E731
    fresh = {size(r) for r in results}
    old = [r for r in old_doc.get("results", []) if size(r) not in fresh]
    return sorted(old + results, key=size)


def print_table(rows: list[dict]) -> None:
    headers = list(dict.fromkeys(h for r in rows for h in r))
    widths = [max(len(h), *(len(str(r.get(h, ""))) for r in rows)) for h in headers]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(h, "")).rjust(w) for h, w in zip(headers, widths, strict=True)))


def machine_info(device: str) -> dict:
    m = this_machine(torch.device(device))
    paths = candidates(m, torch.float16, faiss_usable(torch.device(device)))
    return {
        "cpu": m.model if device == "cpu" else this_machine("cpu").model,
        "gpu": m.model if device == "cuda" else None,
        "flags": m.shown_flags,
        "fp16_candidate_paths": list(paths),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "software": m.software,
        "faiss_gpus": faiss_gpus(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": os.getloadavg(),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000x512", help="comma-separated NxD galleries")
    ap.add_argument("--batches", default="1,10,100,1000")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds timed per cell")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per cell")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--argsort", action="store_true", help="also time the full-argsort approach")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default by device)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here")
    args.batches = [int(b) for b in args.batches.split(",")]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    out = args.out or RESULTS / ("search.json" if args.device == "cpu" else "search-cuda.json")
    machine = machine_info(args.device)
    print(f"machine: {machine['cpu']}; flags: {' '.join(machine['flags'])}")
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_size(n, d, args, str(Path(tmp) / f"{n}x{d}")) for n, d in sizes]
    print()
    print_table(summary_table(results))
    results = merge_previous(out, results, machine)
    doc = {"machine": machine, "k": K, "summary": summary_table(results), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
