"""Peak memory of a `best` benchmark run: every model kept loaded vs the stage-major schedule.

``best`` names a captioner, a text LLM and a multimodal LLM. Run as one chain over every query
with every model loaded for the whole run (``all resident``: what the engine did before stage-major
runs, emulated with ``keep_models``), its peak holds all three; stage by stage with each model
released after the last stage naming it (``stage-major``, the default), the peak is the largest
stage. Each mode runs in a fresh process on a miniature CIRCO split (placeholder images, the
official annotation layout) with small random models built from configs (the LLM and the MLLM
have ~76 M parameters each, so their weights dominate the process), and reports the process's
peak resident memory and the peak of model bytes held, from the run's resource accounting.

The second table compares ``cir pipelines plan``'s estimate for each model (from its config,
before loading) with the bytes of its parameters once loaded.

Usage:
    python benchmarks/memory.py              # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SIZE = {"hidden": 1024, "layers": 8}


def build_models(folder: Path) -> dict[str, str]:
    from cir.testing.clip import tiny_open_clip
    from cir.testing.lm import tiny_blip_captioner, tiny_causal_lm, tiny_chat_vlm

    return {
        "clip": tiny_open_clip(folder / "clip"),
        "blip": tiny_blip_captioner(folder / "blip"),
        "lm": tiny_causal_lm(folder / "lm", **SIZE),
        "vlm": tiny_chat_vlm(folder / "vlm", **SIZE),
    }


def overrides(models: dict[str, str]) -> list[str]:
    # two requests per generate call keep the activations of the long prompts (the tiny
    # tokenizer spends ~1,000 tokens on them) below the weights, which the run is about
    vlm = {"backend": "transformers", "model": models["vlm"], "batch_size": 2}
    values = {
        "stages.caption.captioner": {"backend": "transformers", "model": models["blip"]},
        "stages.caption.num_captions": 3, "stages.caption.max_tokens": 6,
        "stages.recompose.llm": {"backend": "transformers", "model": models["lm"], "batch_size": 2},
        "stages.recompose.max_tokens": 8,
        "stages.retrieve.rule": "dot", "stages.retrieve.rule_params": {},
        "stages.rerank_wide.llm": vlm, "stages.rerank_wide.top_n": 6,
        "stages.rerank_wide.tile_size": 48, "stages.rerank_wide.max_tokens": 8,
        "stages.rerank.llm": vlm, "stages.rerank.top_n": 4, "stages.rerank.max_tokens": 8,
    }  # fmt: skip
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def model_bytes(obj) -> int:
    """Bytes of the torch parameters and buffers a loaded resource holds."""
    model = getattr(obj, "model", None) or getattr(obj, "net", None) or obj
    if not hasattr(model, "parameters"):
        return 0
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_child(mode: str, data: Path, work: Path, models: dict[str, str]) -> dict:
    """One `best` run in this process; prints peak RSS and the peak of model bytes held."""
    from cir.bench.runner import run_benchmark
    from cir.resources import Resources

    class Sized(Resources):
        def __init__(self) -> None:
            super().__init__()
            self.sizes, self.peak = {}, 0

        def _build(self, key, factory):
            item = super()._build(key, factory)
            self.sizes[key] = model_bytes(item)
            return item

        def _log(self, action, key):
            super()._log(action, key)
            held = sum(self.sizes.get(k, 0) for k in self.keys())
            self.peak = max(self.peak, held)

    resources = Sized()
    baseline = current_rss()
    run_benchmark(
        "circo", "val", data_root=data, pipeline="best", encoder=models["clip"],
        out_dir=work / mode, cache_dir=work / f"cache-{mode}", progress=False,
        overrides=overrides(models), resources=resources, keep_models=mode == "all resident",
    )  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "peak_rss_bytes": rss,
        "baseline_rss_bytes": baseline,
        "peak_above_baseline_bytes": rss - baseline,
        "peak_model_bytes": resources.peak,
    }


def current_rss() -> int:
    """Resident bytes now (after imports: torch, transformers and cir's modules)."""
    import transformers  # noqa: F401

    import cir.bench.runner  # noqa: F401  (loaded before measuring, as in the run)

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def plan_vs_load(models: dict[str, str]) -> list[dict]:
    """The plan's estimate of each language model against its loaded parameter bytes."""
    from cir.llm import load_backend
    from cir.plan import estimate
    from cir.resources import ModelUse, Resources

    rows = []
    for name in ("blip", "lm", "vlm"):
        spec = {"backend": "transformers", "model": models[name], "dtype": "float32"}
        planned = estimate(ModelUse.language(("x",), spec, "llm"), "cpu")
        loaded = model_bytes(load_backend(spec, Resources()))
        rows.append({"model": name, "params": planned.params, "planned_bytes":
                     planned.weight_bytes, "loaded_bytes": loaded,
                     "ratio": round(planned.weight_bytes / loaded, 4)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, metavar=("MODE", "DATA", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, data, work = args.child
        models = json.loads((Path(work) / "models.json").read_text())
        print(json.dumps(run_child(mode, Path(data), Path(work), models)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = build_models(work / "models")
        (work / "models.json").write_text(json.dumps(models))
        data = miniature(work)
        runs = {mode: child(mode, data, work) for mode in ("all resident", "stage-major")}
        plan = plan_vs_load(models)
    report(runs, plan)


def miniature(work: Path) -> Path:
    from cir.bench.placeholders import make_miniature

    source = REPO / "tests" / "fixtures" / "benchmarks"  # the official layout, made-up entries
    return make_miniature("circo", source / "circo", work / "circo", 8, 50, ("val",))


def child(mode: str, data: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(data), str(work)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(runs: dict, plan: list[dict]) -> None:
    mib = 2**20
    before, after = runs["all resident"], runs["stage-major"]
    head = f"{'mode':<14} {'peak RSS':>9} {'above baseline':>15} {'models held':>12}  (MiB)"
    print(head)
    for mode, r in runs.items():
        print(
            f"{mode:<14} {r['peak_rss_bytes'] / mib:>9.0f} "
            f"{r['peak_above_baseline_bytes'] / mib:>15.0f} {r['peak_model_bytes'] / mib:>12.1f}"
        )
    rss_ratio = after["peak_rss_bytes"] / before["peak_rss_bytes"]
    above = after["peak_above_baseline_bytes"] / before["peak_above_baseline_bytes"]
    model_ratio = after["peak_model_bytes"] / before["peak_model_bytes"]
    print(
        f"stage-major / all resident: peak RSS {rss_ratio:.2f}, above baseline {above:.2f}, "
        f"models held {model_ratio:.2f}\n"
    )
    print(f"{'model':<6} {'params':>11} {'plan (MiB)':>11} {'loaded (MiB)':>13} {'ratio':>7}")
    for row in plan:
        print(f"{row['model']:<6} {row['params']:>11,} {row['planned_bytes'] / mib:>11.1f} "
              f"{row['loaded_bytes'] / mib:>13.1f} {row['ratio']:>7.3f}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "runs": runs,
        "ratios": {
            "rss": round(rss_ratio, 4),
            "rss_above_baseline": round(above, 4),
            "model_bytes": round(model_ratio, 4),
        },
        "plan_vs_load": plan,
    }
    (RESULTS / "memory.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
