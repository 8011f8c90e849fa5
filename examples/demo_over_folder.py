"""Open the cir demo over a folder of photos.

    python examples/demo_over_folder.py ~/Pictures                     # cir's default CLIP
    python examples/demo_over_folder.py ~/Pictures --model ViT-L-14/openai
    python examples/demo_over_folder.py --offline    # sample photos, tiny random CLIP, no download

The same as `cir demo --gallery FOLDER`, written out with the Python API: index the folder, build
the page, serve it on http://127.0.0.1:7860. Needs the demo extra: pip install "cir[demo]".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from cir import CirError, GalleryIndex, load_encoder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the demo app lives in demos/ beside this folder

from demos.app import build_app, launch_app  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", help="folder of images (searched recursively)")
    parser.add_argument("--model", default="ViT-B-32/openai", help="CLIP encoder name or path")
    parser.add_argument("--offline", action="store_true", help="sample photos, tiny random CLIP")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    try:
        folder, model = prepare(args)
        work = Path(tempfile.mkdtemp(prefix="cir-demo-"))
        index = GalleryIndex.build(folder, load_encoder(model), out=work / "index")
        app = build_app(index, pipelines=["clip_fusion", "image_only", "text_only"])
        launch_app(app, port=args.port)
    except CirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def prepare(args: argparse.Namespace) -> tuple[Path, str]:
    """The folder and encoder to use: the user's, or offline stand-ins."""
    if not args.offline:
        if args.folder is None:
            sys.exit("give a folder of images, or --offline")
        return Path(args.folder), args.model
    from cir.sample_gallery import gather_sample_photos
    from cir.testing.clip import tiny_open_clip

    work = Path(tempfile.mkdtemp(prefix="cir-demo-offline-"))
    gather_sample_photos(work / "photos")
    return work / "photos", tiny_open_clip(work / "clip")


if __name__ == "__main__":
    sys.exit(main())
