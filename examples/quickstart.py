"""Build an index over real sample photos and run composed searches on it.

    python examples/quickstart.py                       # the default CLIP model (downloaded once)
    python examples/quickstart.py --model local-dir:/models/my_clip   # fully offline

The photos are the ones that ship inside installed packages (scikit-image, scikit-learn,
matplotlib, gradio): no dataset download is needed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from cir import CirError, GalleryIndex, Query, load_pipeline
from cir.models import DEFAULT_ENCODER, load_encoder
from cir.sample_gallery import SAMPLE_QUERIES, gather_sample_photos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_ENCODER, help="encoder name or local path")
    parser.add_argument("--pipeline", default="clip_fusion", help="pipeline name or YAML path")
    parser.add_argument("--work-dir", default=".cache/quickstart", help="where photos and index go")
    parser.add_argument("-k", type=int, default=5, help="results per query")
    args = parser.parse_args()
    try:
        run(args)
    except CirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    work = Path(args.work_dir)
    photos = gather_sample_photos(work / "photos")
    print(f"gallery: {len(photos)} photos in {work / 'photos'}")
    index_dir = work / f"index-{hashlib.sha1(args.model.encode()).hexdigest()[:10]}"
    encoder = load_encoder(args.model)
    index = GalleryIndex.build(work / "photos", encoder, out=index_dir)
    print(f"index: {len(index)} images, {index.dim}-d, encoder {encoder.identity.key}\n")
    pipeline = load_pipeline(args.pipeline)
    queries = [
        Query(text, reference=work / "photos" / name, id=name) for name, text in SAMPLE_QUERIES
    ]
    for state in pipeline.run(queries, index):
        print(f"{state.query.id} + {state.query.text!r}")
        for rank, (gid, score) in enumerate(zip(*_top(state, args.k), strict=True), 1):
            print(f"  {rank}. {gid:<28} {score:.4f}")
        print()


def _top(state, k):
    ranking = state.ranking.top(k)
    return ranking.ids, ranking.scores


if __name__ == "__main__":
    sys.exit(main())
