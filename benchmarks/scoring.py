"""Every scoring rule of ``cir.scoring``, batched and chunked, against a per-query Python loop.

For each rule it times the chunked batched path (all queries at once, the fp16 gallery upcast
chunk by chunk, top-50 merged across chunks) and a per-query loop in the style of the published
code (an fp32 copy of the whole gallery, the rule's full score vector for one query at a time,
then a full ``argsort``, as the published scripts rank). The same loop with ``topk`` instead of
``argsort`` is timed too (``vs topk``), as a stronger baseline. Loops are timed on
``--loop-queries`` queries and extrapolated linearly to all queries (their one-off setup, such
as the fp32 copy, counted once). Peak memory is the largest
resident-set growth above the level before the run (sampled every 2 ms), so the gallery itself
(allocated before) is not counted; the loop's fp32 gallery copy is allocated inside its run and
is counted. Both paths must return the same top-50 rows ("agree": the share of identical
top-50 rows on the timed loop queries). Each time is the best of ``--repeat`` runs.

Rules: dot (plain cosine), pdv (PDV-F query + cosine), weimocir (K captions per image, the
reference form q_k), seize, ldre (adaptive weights from N slots, weighed per query so both
paths rank alike, + cosine), basic (query expansion + Harris fusion), hubness (inverted
softmax with a bank of generic caption embeddings).

Usage:
    python benchmarks/scoring.py                  # 100k gallery, 1000 queries (4-5 minutes)
    python benchmarks/scoring.py --gallery 1000000 --loop-queries 3 --tag 1m   # the full size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cir.scoring import (
    apply_hub_penalty,
    basic_scores,
    chunked_topk,
    contrastive_projection,
    dot_scores,
    expand_query,
    hub_penalty,
    iter_chunks,
    l2_normalize,
    ldre_ensemble,
    ldre_weights,
    pdv_query,
    seize_scores,
    weimocir_query,
    weimocir_scores,
)

K = 50
RESULTS = Path(__file__).resolve().parent / "results"
RULES = ("dot", "pdv", "weimocir", "seize", "ldre", "basic", "hubness")


class PeakRSS:
    """Largest growth of this process's resident memory while the block runs (MiB)."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.base) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def unit(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Unit vectors around a shared direction, generated in blocks (bounded memory)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=torch.Generator().manual_seed(7))
    common = common / common.norm() * d**0.5
    out = torch.empty(n, d, dtype=dtype)
    for s in range(0, n, 65536):
        block = torch.randn(min(65536, n - s), d, generator=g) + common
        out[s : s + len(block)] = l2_normalize(block).to(dtype)
    return out


def make_world(args) -> dict:
    n, d, q, k = args.gallery, args.dim, args.queries, args.captions
    w = {"G": unit(n, d, 1, torch.float16)}
    if "weimocir" in args.rules:
        w["C"] = unit(n * k, d, 2, torch.float16).reshape(n, k, d)
    for i, name in enumerate(("image", "text", "ref_text", "composed", "caption")):
        w[name] = unit(q, d, 10 + i)
    w["ref_caps"] = unit(q * k, d, 20).reshape(q, k, d)
    w["slots_t"] = unit(q * args.slots, d, 21).reshape(q, args.slots, d)
    w["slots_b"] = unit(q * args.slots, d, 22).reshape(q, args.slots, d)
    w["bank"] = unit(args.bank, d, 23)
    w["mean"] = w["G"][: min(n, 100_000)].float().mean(0)
    w["P"] = contrastive_projection(unit(200, d, 24) - 0.1, unit(100, d, 25) - 0.1, 0.2, 250)
    return w


# ----------------------------------------------------------------------------- batched paths
def batched(rule: str, w: dict, chunk: int) -> torch.Tensor:
    """Top-K rows for all queries through the chunked driver."""
    G = w["G"]

    def topk(fn: Callable) -> torch.Tensor:
        return chunked_topk(fn, G, K, chunk)[1]

    if rule == "dot":
        q = w["composed"]
        return topk(lambda s, e, g: dot_scores(q, g))
    if rule == "pdv":
        q = pdv_query(w["image"], w["ref_text"], w["composed"])
        return topk(lambda s, e, g: dot_scores(q, g))
    if rule == "weimocir":
        q = weimocir_query(w["image"], w["text"])
        qk = weimocir_query(w["ref_caps"], w["text"][:, None].expand_as(w["ref_caps"]))
        return topk(lambda s, e, g: weimocir_scores(q, g, w["C"][s:e].float(), qk, 0.1))
    if rule == "seize":
        return topk(lambda s, e, g: seize_scores(w["composed"], w["caption"], g))
    if rule == "ldre":
        t, b = w["slots_t"], w["slots_b"]
        flat_diff = (b - t).reshape(-1, t.shape[-1])
        rows = max(1, chunk // t.shape[1])  # Q x N virtual queries: same score-matrix size
        top = chunked_topk(lambda s, e, g: (flat_diff @ g.T).clamp_(min=0), G, 5, rows)[0]
        weights, _ = ldre_weights(top.reshape(t.shape[0], t.shape[1], -1), per_query=True)
        q = ldre_ensemble(t, weights)
        return topk(lambda s, e, g: dot_scores(q, g))
    if rule == "basic":
        mean, P = w["mean"], w["P"]
        vc = w["image"] - mean
        pv = vc @ P
        sims, rows = chunked_topk(lambda s, e, g: pv @ (g - mean).T, G, 25, chunk)
        neighbours = G[rows].float() - mean
        v = expand_query(vc, neighbours, sims, P)
        t = w["text"] - 0.1
        return topk(lambda s, e, g: basic_scores(v, t, g, mean, -0.3, -0.2))
    if rule == "hubness":
        q = w["composed"]
        penalty = torch.cat(
            [hub_penalty(w["bank"], g) for _, _, g in iter_chunks(G, chunk)]
        )  # once per gallery, as the retrieve stage caches it
        return topk(lambda s, e, g: apply_hub_penalty(q @ g.T, penalty[s:e], "inverted_softmax"))
    raise ValueError(rule)


# ----------------------------------------------------------------------------- per-query loop
def loop(rule: str, w: dict, n_queries: int, rank: str = "argsort") -> tuple[torch.Tensor, float]:
    """Top-K rows query by query over a full fp32 gallery, as the published scripts do.

    ``rank="argsort"`` sorts the whole score vector, as the published scripts rank;
    ``rank="topk"`` is the same loop with a partial top-K (a stronger baseline). Returns the
    rows and the seconds of one-off setup (fp32 copies, per-gallery terms), which are not
    multiplied when the loop time is extrapolated to all queries.
    """
    start = time.perf_counter()
    G = w["G"].float()
    rows = []
    extra = _loop_setup(rule, w, G)
    setup = time.perf_counter() - start
    for i in range(n_queries):
        scores = _loop_scores(rule, w, G, i, extra)
        if rank == "argsort":
            rows.append(torch.argsort(scores, descending=True)[:K])
        else:
            rows.append(scores.topk(K).indices)
    return torch.stack(rows), setup


def _loop_setup(rule: str, w: dict, G: torch.Tensor) -> dict:
    if rule == "weimocir":
        return {"C": w["C"].float()}
    if rule == "hubness":  # once per gallery, in chunks (a full bank x gallery matrix is huge)
        return {"norm": torch.cat([hub_penalty(w["bank"], g) for _, _, g in iter_chunks(G)])}
    if rule == "basic":
        return {"Gc": G - w["mean"]}
    return {}


def _loop_scores(rule: str, w: dict, G: torch.Tensor, i: int, extra: dict) -> torch.Tensor:
    if rule == "dot":
        return G @ w["composed"][i]
    if rule == "pdv":
        q = pdv_query(w["image"][i : i + 1], w["ref_text"][i : i + 1], w["composed"][i : i + 1])
        return G @ q[0]
    if rule == "weimocir":
        q = weimocir_query(w["image"][i], w["text"][i])
        total = 0.9 * (G @ q)
        for k in range(extra["C"].shape[1]):
            qk = weimocir_query(w["ref_caps"][i, k], w["text"][i])
            total = total + 0.1 * (extra["C"][:, k] @ qk) / extra["C"].shape[1]
        return total
    if rule == "seize":
        after = G @ w["composed"][i]
        diff = after - G @ w["caption"][i]
        return after + 2.1 * diff.clamp(max=0) + 0.13 * diff.clamp(min=0)
    if rule == "ldre":
        t, b = w["slots_t"][i], w["slots_b"][i]
        tops = torch.stack([(G @ (b[j] - t[j])).clamp(min=0).topk(5).values for j in range(len(t))])
        weights, _ = ldre_weights(tops[None], per_query=True)
        return G @ ldre_ensemble(t[None], weights)[0]
    if rule == "basic":
        Gc = extra["Gc"]
        vc = w["image"][i] - w["mean"]
        pv = vc @ w["P"]
        sims = Gc @ pv
        top = sims.topk(25)
        v = expand_query(vc[None], Gc[top.indices][None], top.values[None], w["P"])[0]
        sv = ((Gc @ v + 0.3) / 0.3).clamp(min=0)
        st = ((Gc @ (w["text"][i] - 0.1) + 0.2) / 0.3).clamp(min=0)
        return sv * st - 0.1 * (sv + st) ** 2
    if rule == "hubness":
        return (G @ w["composed"][i]) / 0.05 - extra["norm"]
    raise ValueError(rule)


# ----------------------------------------------------------------------------- driver
def measure(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float, float]:
    """Output, best wall time over ``repeat`` runs (the machine is shared), and peak MiB."""
    best, peak = float("inf"), 0.0
    for _ in range(repeat):
        with PeakRSS() as mem:
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        peak = max(peak, mem.mib)
    return out, best, peak


def extrapolate(seconds: float, setup: float, timed: int, total: int) -> float:
    """Loop time for ``total`` queries: setup once, the per-query part scaled linearly."""
    return setup + (seconds - setup) / timed * total


def run(args, save: Callable[[list[dict]], None]) -> list[dict]:
    torch.manual_seed(0)
    w = make_world(args)
    batched("dot", w, args.chunk)  # warm up thread pools and allocators before timing
    rows = []
    for rule in args.rules:
        top_b, t_b, m_b = measure(lambda r=rule: batched(r, w, args.chunk), args.repeat)
        nq = min(args.loop_queries, args.queries)
        (top_l, setup_l), t_l, m_l = measure(lambda r=rule, n=nq: loop(r, w, n), args.repeat)
        (_, setup_k), t_k, _ = measure(lambda r=rule, n=nq: loop(r, w, n, "topk"), args.repeat)
        loop_all = extrapolate(t_l, setup_l, nq, args.queries)
        topk_all = extrapolate(t_k, setup_k, nq, args.queries)
        same = _agreement(top_b[:nq], top_l)
        rows.append(
            dict(
                rule=rule,
                batched_s=round(t_b, 3),
                loop_s_measured=round(t_l, 3),
                loop_queries=nq,
                loop_setup_s=round(setup_l, 2),
                loop_s_extrapolated=round(loop_all, 2),
                speedup=round(loop_all / t_b, 1),
                loop_topk_s_extrapolated=round(topk_all, 2),
                speedup_vs_topk_loop=round(topk_all / t_b, 1),
                batched_peak_mib=round(m_b, 1),
                loop_peak_mib=round(m_l, 1),
                top50_agreement=same,
            )
        )
        print(_line(rows[-1]), flush=True)
        save(rows)  # after every rule, so a long run keeps what it measured
        if rule == "weimocir":
            w.pop("C", None)  # free the caption embeddings for the rules after it
    return rows


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    hits = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b, strict=True))
    return round(hits / a.numel(), 4)


def _line(r: dict) -> str:
    agree = "-" if r["top50_agreement"] is None else f"{r['top50_agreement']:.4f}"
    return (
        f"{r['rule']:<9} {r['batched_s']:>9.2f} {r['loop_s_extrapolated']:>10.1f} "
        f"{r['speedup']:>8.1f}x {r['speedup_vs_topk_loop']:>8.1f}x "
        f"{r['batched_peak_mib']:>10.0f} {r['loop_peak_mib']:>10.0f} {agree:>8}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--captions", type=int, default=3, help="WeiMoCIR captions per image")
    ap.add_argument("--slots", type=int, default=15, help="LDRE captions per query")
    ap.add_argument("--bank", type=int, default=1024, help="hubness bank size")
    ap.add_argument("--chunk", type=int, default=16384, help="gallery rows per chunk")
    ap.add_argument("--loop-queries", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; best time kept")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--tag", default="", help="write results/scoring-<tag>.json instead")
    args = ap.parse_args()
    print(
        f"gallery {args.gallery} x {args.dim} fp16, {args.queries} queries, chunk {args.chunk}, "
        f"top-{K}, {torch.get_num_threads()} threads, {platform.machine()}"
    )
    print(
        f"{'rule':<9} {'batched s':>9} {'loop s':>10} {'speedup':>9} {'vs topk':>9} "
        f"{'peak MiB':>10} {'loop MiB':>10} {'agree':>8}"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (f"scoring-{args.tag}.json" if args.tag else "scoring.json")
    config = dict(vars(args))
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__}

    def save(rows: list[dict]) -> None:
        out.write_text(json.dumps({"config": config, "machine": machine, "rows": rows}, indent=2))

    run(args, save)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
