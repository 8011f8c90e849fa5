"""Model calls, images and image tokens per query of the reasoning methods, as shipped.

Each shipped pipeline (imagescope, cotmr, mcotre, setr, cirevl_sc4cir) runs with its own settings
(top_n, tile sizes, image bounds) over a synthetic gallery of 640x480 photos indexed with a tiny
CLIP; only its language models are replaced by scripted ones that record every request the real
stages build. Answers are scripted to a typical shape: ImageScope's reasoner writes three
propositions and its evaluator rejects every candidate (the worst case: top_n requests; one
request when it accepts the first), the other models answer in their prompts' format. Image
tokens are counted with Qwen2-VL's image processor at its default settings (28x28 pixels per
token), the family the pipelines default to, as a common yardstick: LLaVA-1.6, PaliGemma and
InternVL2 tokenise images differently.

Usage:
    python benchmarks/methods_cost.py --queries 4
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from PIL import Image
from rerank import table  # the markdown table of benchmarks/rerank.py (run from benchmarks/)

from cir import Query
from cir.gallery_captions import set_caption_sidecar
from cir.index import GalleryIndex
from cir.llm import ScriptedLLM, spec_key
from cir.models import load_encoder
from cir.pipeline import load_pipeline
from cir.resources import Resources
from cir.testing.clip import tiny_open_clip

RESULTS = Path(__file__).resolve().parent / "results"
DECOMPOSE = '{"edits": [["Modification", "x"]], "targets": ["a", "b", "c"]}'
QUESTIONS = '{"questions": [["Is it red?", "yes"], ["Is there a hat?", "yes"], ["Any dog?", "no"]]}'
ANSWERS = {
    ("imagescope", "caption"): "a photo of a thing",
    ("imagescope", "decompose"): DECOMPOSE,
    ("imagescope", "propositions"): QUESTIONS,
    ("imagescope", "verify_propositions"): "yes",
    ("imagescope", "evaluate"): "Answer: No",
    ("cotmr", "analyze"): '{"target_caption": "a", "present_objects": ["b"], "absent_objects": []}',
    ("mcotre", "analyze"): '{"modification_caption": "a", "integrated_caption": "b"}',
    ("setr", "rerank"): "Yes",
    ("cirevl_sc4cir", "caption"): "a photo of a thing",
    ("cirevl_sc4cir", "recompose"): "Target Description: a red thing",
    ("cirevl_sc4cir", "consistency"): "make it red",
}
PIPELINES = ("imagescope", "cotmr", "mcotre", "setr", "cirevl_sc4cir")


def gallery(folder: Path, encoder, count: int = 60) -> GalleryIndex:
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=generator))
        image = Image.new("RGB", (640, 480), colour)
        image.paste((255 - colour[0], colour[1] // 2, 90), (i * 7 % 320, 0, 400, 160))
        image.save(folder / f"g{i:03d}.png")
    index = GalleryIndex.build(folder, encoder, out=folder / "index", num_workers=0, progress=False)
    set_caption_sidecar(index, [[f"photo {i}"] for i in range(len(index))], encoder)
    return index


def scripted_models(name: str, resources: Resources) -> tuple[dict, dict[str, ScriptedLLM]]:
    """Overrides naming one scripted model per language-model stage, and those models."""
    overrides, models = {}, {}
    for stage in load_pipeline(name).stages:
        for param in stage.language_models:
            spec = {"backend": "scripted", "name": f"{name}-{stage.instance}", "default": "-"}
            llm = ScriptedLLM(default=ANSWERS[(name, stage.instance)], name=spec["name"])
            resources.get(spec_key(spec), lambda llm=llm: llm)
            overrides[f"stages.{stage.instance}.{param}"] = spec
            models[stage.instance] = llm
    return overrides, models


def image_tokens(images: list[Image.Image], processor) -> int:
    if not images:
        return 0
    grid = processor(images=images, return_tensors="pt")["image_grid_thw"]
    return int(sum(int(t * h * w) // processor.merge_size**2 for t, h, w in grid.tolist()))


def measure(name: str, index: GalleryIndex, queries: int, processor) -> list[dict]:
    resources = Resources()
    overrides, models = scripted_models(name, resources)
    reference_ids = index.ids[:queries]
    batch = [
        Query(f"make it red #{i}", reference_id=r, id=f"q{i}") for i, r in enumerate(reference_ids)
    ]
    load_pipeline(name, overrides=overrides).run(batch, index, resources=resources)
    rows = []
    for stage, llm in models.items():
        images = [im for req in llm.calls for im in req.images]
        largest = max((im.size for im in images), key=lambda s: s[0] * s[1], default=None)
        rows.append({
            "pipeline": name,
            "stage": stage,
            "calls_per_query": round(len(llm.calls) / queries, 2),
            "images_per_query": round(len(images) / queries, 2),
            "image_tokens_per_query": image_tokens(images, processor) // queries,
            "largest_image": f"{largest[0]}x{largest[1]}" if largest else "-",
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=4)
    args = parser.parse_args()
    from transformers import Qwen2VLImageProcessor

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        encoder = load_encoder(tiny_open_clip(folder / "clip"))
        (folder / "photos").mkdir()
        index = gallery(folder / "photos", encoder)
        processor = Qwen2VLImageProcessor()
        rows = [row for name in PIPELINES for row in measure(name, index, args.queries, processor)]
    print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "methods_cost.json"
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, no GPU"
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "cost": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
