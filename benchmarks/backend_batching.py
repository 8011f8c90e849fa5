"""Backend throughput: one batched ``generate`` call versus one request at a time.

- transformers: the tiny Qwen2 LM from ``cir.testing.lm`` (random weights, real generate path);
- openai: the OpenAI-compatible backend against a local stdlib HTTP server that answers each
  request after a fixed delay (standing in for model latency), so the gain is the bounded
  concurrency of the client.

Usage:
    python benchmarks/backend_batching.py [--requests 32] [--max-tokens 8] [--latency 0.05]

Prints a table and writes benchmarks/results/backend_batching.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from cir.llm import ChatRequest, load_backend
from cir.resources import Resources
from cir.testing.lm import tiny_causal_lm
from cir.testing.openai_server import fixed_answer_server

RESULTS = Path(__file__).resolve().parent / "results" / "backend_batching.json"


def timed(llm, requests: list[ChatRequest], batched: bool) -> float:
    start = time.perf_counter()
    if batched:
        llm.generate(requests)
    else:
        for req in requests:
            llm.generate([req])
    return time.perf_counter() - start


def prompts(count: int, max_tokens: int) -> list[ChatRequest]:
    topics = ["a red dress", "two dogs on a beach", "a black cat", "a green car with a person"]
    return [
        ChatRequest.from_prompt(f"Describe {topics[i % 4]} (variant {i}).", max_tokens=max_tokens)
        for i in range(count)
    ]


def bench_transformers(count: int, max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"backend": "transformers", "model": tiny_causal_lm(Path(tmp) / "lm")}
        llm = load_backend({**spec, "batch_size": count}, Resources())
        reqs = prompts(count, max_tokens)
        llm.generate(reqs[:2])  # warm-up
        return {"one_by_one_s": timed(llm, reqs, False), "batched_s": timed(llm, reqs, True)}


def bench_openai(count: int, latency: float, concurrency: int) -> dict:
    with fixed_answer_server("ok", delay=latency) as url:
        spec = {"backend": "openai", "model": "m", "base_url": url, "api_key_env": None}
        llm = load_backend({**spec, "max_concurrency": concurrency}, Resources())
        reqs = prompts(count, 8)
        return {"one_by_one_s": timed(llm, reqs, False), "batched_s": timed(llm, reqs, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05, help="server delay per request (s)")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    rows = {
        "transformers (tiny Qwen2)": bench_transformers(args.requests, args.max_tokens),
        f"openai (local server, {args.latency * 1000:.0f} ms/request)": bench_openai(
            args.requests, args.latency, args.concurrency
        ),
    }
    print(f"{args.requests} requests, max_tokens={args.max_tokens}")
    print(f"{'backend':<45} {'one-by-one s':>13} {'batched s':>10} {'speed-up':>9}")
    for name, row in rows.items():
        row["speedup"] = row["one_by_one_s"] / row["batched_s"]
        print(f"{name:<45} {row['one_by_one_s']:>13.3f} {row['batched_s']:>10.3f} "
              f"{row['speedup']:>8.1f}x")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": torch.get_num_threads(), "machine": platform.machine()}
    RESULTS.write_text(json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
