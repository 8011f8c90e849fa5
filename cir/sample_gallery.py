"""A small real photo gallery gathered from images that ship inside common Python packages.

scikit-image, scikit-learn, gradio and matplotlib each carry a few everyday colour photos (a cat,
a cup of coffee, a rocket, a motorcycle, a lion, a temple, ...). :func:`gather_sample_photos`
copies the ones that are installed into a folder, so examples, the quickstart and the tests have a
real gallery without downloading anything. :data:`SAMPLE_QUERIES` are composed queries over them.

Example:
    >>> photos = gather_sample_photos(Path("gallery"))
    >>> reference, text = SAMPLE_QUERIES[0]
    >>> (Path("gallery") / reference).exists()
    True
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cir.errors import DataError

logger = logging.getLogger("cir.sample_gallery")

MIN_SIDE = 128


@dataclass(frozen=True)
class SamplePhoto:
    """A photo inside an installed package: ``name`` is the file stem it gets in the gallery."""

    name: str
    package: str
    relative_path: str
    loader: str | None = None  # skimage.data function that fetches it when the file is absent


SAMPLE_PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("astronaut", "skimage", "data/astronaut.png", "astronaut"),
    SamplePhoto("cat", "skimage", "data/chelsea.png", "chelsea"),
    SamplePhoto("coffee", "skimage", "data/coffee.png", "coffee"),
    SamplePhoto("rocket", "skimage", "data/rocket.jpg", "rocket"),
    SamplePhoto("motorcycle_left", "skimage", "data/motorcycle_left.png"),
    SamplePhoto("motorcycle_right", "skimage", "data/motorcycle_right.png"),
    SamplePhoto("galaxies", "skimage", "data/hubble_deep_field.jpg", "hubble_deep_field"),
    SamplePhoto("temple", "sklearn", "datasets/images/china.jpg"),
    SamplePhoto("flower", "sklearn", "datasets/images/flower.jpg"),
    SamplePhoto("cheetah", "gradio", "media_assets/images/cheetah.jpg"),
    SamplePhoto("cheetah_face", "gradio", "media_assets/images/cheetah1.jpg"),
    SamplePhoto("lion", "gradio", "media_assets/images/lion.jpg"),
    SamplePhoto("tower", "gradio", "media_assets/images/tower.jpg"),
    SamplePhoto("toy_figure", "gradio", "media_assets/images/groot.jpeg"),
    SamplePhoto("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)

PACKAGES = {
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "gradio": "gradio",
    "matplotlib": "matplotlib",
}

SAMPLE_QUERIES: tuple[tuple[str, str], ...] = (
    ("cheetah.jpg", "a lion instead of the cheetah, resting on the grass"),
    ("cat.png", "a cup of coffee on a table instead of the cat"),
    ("motorcycle_left.png", "the same motorcycle scene seen from a slightly different viewpoint"),
    ("rocket.jpg", "a tall stone tower instead of the rocket"),
    ("astronaut.png", "an old black and white portrait of a woman in a navy uniform"),
    ("flower.jpg", "an old temple with a curved roof instead of the flower"),
)
"""(reference file name, modification text) pairs over the gathered photos."""


def gather_sample_photos(dest: Path, limit: int | None = None) -> list[Path]:
    """Copy the sample photos that are installed into ``dest`` and return their paths.

    Photos whose package is missing or whose file is unavailable (some scikit-image images need a
    download) are skipped with a logged note; the rest are copied byte for byte under readable
    names (``cat.png``, ``lion.jpg``, ...), in the order of :data:`SAMPLE_PHOTOS`.

    Args:
        dest: folder to copy into (created if needed; same-named files are overwritten).
        limit: stop after this many photos.

    Returns:
        The copied files.

    Raises:
        DataError: not a single photo could be found.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of photos or None, got {limit}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied: list[Path] = []
    for photo in SAMPLE_PHOTOS:
        if limit is not None and len(copied) >= limit:
            break
        path = _copy_photo(photo, dest)
        if path is not None:
            copied.append(path)
    if not copied:
        names = ", ".join(sorted(set(PACKAGES.values())))
        raise DataError(
            f"no sample photos found: install at least one of {names} "
            "(pip install scikit-image, for instance) or use a folder of your own photos."
        )
    logger.info("gathered %d sample photos into %s", len(copied), dest)
    return copied


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _copy_photo(photo: SamplePhoto, dest: Path) -> Path | None:
    root = _package_dir(photo.package)
    if root is None:
        logger.info("skipping %s: %s is not installed", photo.name, PACKAGES[photo.package])
        return None
    source = root / photo.relative_path
    suffix = ".jpg" if source.suffix.lower() in (".jpg", ".jpeg") else source.suffix.lower()
    target = dest / f"{photo.name}{suffix}"
    if source.is_file() and _is_photo(source):
        shutil.copyfile(source, target)
        return target
    if photo.loader is not None:
        return _fetch_skimage(photo, dest)
    logger.warning("skipping sample photo %s: %s is missing or unreadable", photo.name, source)
    return None


def _fetch_skimage(photo: SamplePhoto, dest: Path) -> Path | None:
    """Ask scikit-image for a photo it does not ship (it downloads it, or fails offline)."""
    target = dest / f"{photo.name}.png"
    try:
        import skimage.data

        pixels = getattr(skimage.data, photo.loader)()
        Image.fromarray(pixels).convert("RGB").save(target)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        # Download failures come in many types; inside a pytest run scikit-image even turns them
        # into pytest's skip outcome (a BaseException), which must not skip the caller's test.
        logger.warning(
            "skipping sample photo %s: scikit-image could not provide it (%s)", photo.name, err
        )
        return None
    return target


def _is_photo(path: Path) -> bool:
    """A readable colour image of a useful size."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            return image.mode in ("RGB", "RGBA") and min(image.size) >= MIN_SIDE
    except (OSError, SyntaxError, ValueError):
        return False
