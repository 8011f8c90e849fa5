"""Benchmark of `cir demo`: start-up time, query latency, shared models, concurrent users.

    python benchmarks/demo.py                  # about 3 minutes on 2 busy CPU cores
    python benchmarks/demo.py --queries 50 --llm-delay 5 --gallery-startup

Everything runs for real: `cir demo` is started as a subprocess on a gallery of real photos with a
tiny random CLIP model, and queried over HTTP with `gradio_client`, as a user's script would.

1. Start-up: seconds from launching `cir demo --index DIR` (with --gallery-startup also
   `--gallery FOLDER`, which indexes first) to the first HTTP 200 of the page.
2. Latency of one query (upload + pipeline + result grid) for clip_fusion and for a language
   pipeline (caption -> recompose -> text search -> listwise re-rank, scripted models).
3. Models load once: the page's `models in memory` counter before and after the queries.
4. Concurrent users: user A runs a pipeline whose LLM (a local OpenAI-compatible server) takes
   --llm-delay seconds; user B sends a clip_fusion query meanwhile. With the default queue
   (2 queries at once) B is answered at once; with `--concurrency 1` B waits for A.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from cir.testing.openai_server import fixed_answer_server

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo.json"
CIR = str(Path(sys.executable).with_name("cir"))


# ---------------------------------------------------------------------- fixtures
def prepare(work: Path) -> dict[str, Path]:
    """Sample photos, a tiny CLIP model, an index, and the two extra pipelines."""
    from cir.index import GalleryIndex
    from cir.models import load_encoder
    from cir.sample_gallery import gather_sample_photos
    from cir.testing.clip import tiny_open_clip

    photos = work / "photos"
    gather_sample_photos(photos)
    model = tiny_open_clip(work / "clip")
    index = work / "index"
    GalleryIndex.build(photos, load_encoder(model), out=index, num_workers=0, progress=False)
    return {"photos": photos, "model": Path(model.split(":", 1)[1]), "index": index}


def language_pipeline(work: Path) -> Path:
    scripted = {"backend": "scripted"}
    stages = [
        {"stage": "caption", "params": {"captioner": {**scripted, "default": "a photo of a cat"}}},
        {
            "stage": "recompose",
            "params": {"llm": {**scripted, "default": "Target Description: a dog on a sofa"}},
        },
        {"stage": "encode_text", "params": {"source": "targets", "output": "target"}},
        {"stage": "retrieve", "params": {"query": "target", "k": 10}},
        {
            "stage": "rerank",
            "params": {"llm": {**scripted, "default": '{"ranking": [2, 1, 3]}'}, "top_n": 5},
        },
    ]
    return _write(work / "language.yaml", "language", stages)


def slow_llm_pipeline(work: Path, base_url: str) -> Path:
    llm = {"backend": "openai", "model": "slow", "base_url": base_url, "api_key_env": None}
    stages = [
        {"stage": "caption", "params": {"captioner": {"backend": "scripted", "echo": True}}},
        {"stage": "recompose", "params": {"llm": llm}},
        {"stage": "encode_text", "params": {"source": "targets", "output": "target"}},
        {"stage": "retrieve", "params": {"query": "target", "k": 10}},
    ]
    return _write(work / "slow_llm.yaml", "slow_llm", stages)


def _write(path: Path, name: str, stages: list) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "stages": stages}))
    return path


# ---------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def demo_server(args: list[str], work: Path):
    """Start `cir demo ARGS`; yields (url, seconds until the first HTTP 200)."""
    port = free_port()
    env = {**os.environ, "CIR_CACHE_DIR": str(work / "cache"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (work / f"server-{port}.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [CIR, "demo", *args, "--port", str(port), "--no-cache"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"cir demo exited: see {log.name}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url, time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


# ---------------------------------------------------------------------- measurements
def search(client, pipeline: str, photo: Path, text: str = "a dog instead") -> float:
    from gradio_client import handle_file

    started = time.perf_counter()
    result = client.predict(
        pipeline, handle_file(str(photo)), text, 0.8, 0.0, 10, None, False, api_name="/search"
    )
    seconds = time.perf_counter() - started
    if not result[0]:
        raise SystemExit(f"{pipeline} returned no results: {result[1][:500]}")
    return seconds


def models_in_memory(client) -> int:
    status = client.predict(api_name="/status")
    return int(re.search(r"models in memory: (\d+)", status).group(1))


def latency(client, pipeline: str, photo: Path, queries: int) -> dict[str, float]:
    first = search(client, pipeline, photo)
    loaded = models_in_memory(client)
    rest = [search(client, pipeline, photo, f"variant {i}") for i in range(queries)]
    return {
        "first_s": first,
        "median_s": statistics.median(rest),
        "p90_s": sorted(rest)[int(0.9 * (len(rest) - 1))],
        "queries": queries,
        "models_after_first": loaded,
        "models_after_all": models_in_memory(client),
    }


def concurrent_users(url: str, photo: Path, delay: float) -> dict[str, float]:
    """User B's clip_fusion latency while user A's slow-LLM query is running."""
    from gradio_client import Client, handle_file

    user_a, user_b = (Client(url, verbose=False, download_files=False) for _ in range(2))
    alone = statistics.median(search(user_b, "clip_fusion", photo) for _ in range(3))
    started = time.perf_counter()
    job = user_a.submit(
        "slow_llm", handle_file(str(photo)), "x", 0.8, 0.0, 10, None, False, api_name="/search"
    )
    time.sleep(min(0.5, delay / 4))
    during = search(user_b, "clip_fusion", photo)
    job.result()
    return {"b_alone_s": alone, "b_during_a_s": during, "a_total_s": time.perf_counter() - started}


# ---------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict:
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="cir-demo-bench-"))
    paths = prepare(work)
    photo = sorted(paths["photos"].iterdir())[0]
    out: dict = {"machine": "x86_64, 2 cores, no GPU", "llm_delay_s": args.llm_delay}
    with fixed_answer_server("Target Description: a red car", delay=args.llm_delay) as base_url:
        extra = ["--pipeline", "clip_fusion", "--pipeline", str(language_pipeline(work))]
        extra += ["--pipeline", str(slow_llm_pipeline(work, base_url))]
        with demo_server(["--index", str(paths["index"]), *extra], work) as (url, startup):
            out["startup_index_s"] = startup
            client = Client(url, verbose=False, download_files=False)
            out["models_at_start"] = models_in_memory(client)
            out["latency"] = {
                name: latency(client, name, photo, args.queries)
                for name in ("clip_fusion", "language")
            }
            out["concurrency_2"] = concurrent_users(url, photo, args.llm_delay)
        if args.gallery_startup:
            model = f"local-dir:{paths['model']}"
            gallery = ["--gallery", str(paths["photos"]), "--model", model]
            gallery += ["--index-out", str(work / "gallery-index")]
            with demo_server(gallery, work) as (_, startup):
                out["startup_gallery_s"] = startup
        with demo_server(["--index", str(paths["index"]), *extra, "--concurrency", "1"], work) as (
            url,
            _,
        ):
            out["concurrency_1"] = concurrent_users(url, photo, args.llm_delay)
    out["gallery_images"] = len(list(paths["photos"].iterdir()))
    out["load_average_1min_at_end"] = os.getloadavg()[0]
    return out


def report(out: dict) -> None:
    rows = [("start-up, --index (s)", out["startup_index_s"])]
    if "startup_gallery_s" in out:
        rows.append(("start-up, --gallery incl. indexing (s)", out["startup_gallery_s"]))
    for name, lat in out["latency"].items():
        rows += [
            (f"{name}: first query, loads its models (s)", lat["first_s"]),
            (f"{name}: median of {lat['queries']} (s)", lat["median_s"]),
            (f"{name}: p90 (s)", lat["p90_s"]),
        ]
    rows.append(("models in memory at start (default pipeline warmed)", out["models_at_start"]))
    for name, lat in out["latency"].items():
        counts = f"{lat['models_after_first']} -> {lat['models_after_all']}"
        rows.append((f"{name}: models after 1st -> after all queries", counts))
    for key in ("concurrency_2", "concurrency_1"):
        c = out[key]
        rows += [
            (f"{key}: B alone (s)", c["b_alone_s"]),
            (f"{key}: B while A waits on the LLM (s)", c["b_during_a_s"]),
            (f"{key}: A total (s)", c["a_total_s"]),
        ]
    width = max(len(r[0]) for r in rows)
    print(
        f"cir demo, {out['gallery_images']} photos, tiny CLIP, {out['machine']}, "
        f"load average {out['load_average_1min_at_end']:.1f}"
    )
    for label, value in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"  {label:<{width}}  {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10, help="timed queries per pipeline")
    parser.add_argument("--llm-delay", type=float, default=3.0, help="slow LLM answer time (s)")
    parser.add_argument(
        "--gallery-startup", action="store_true", help="also time `cir demo --gallery` (+1 min)"
    )
    args = parser.parse_args()
    out = run(args)
    report(out)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
