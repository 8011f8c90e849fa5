"""Drawing many pictures at once: content cache first, then batched and seeded pipeline calls.

Each :class:`Picture` is a prompt and, for editing, the image to edit. :func:`draw` looks every
picture up in the content cache (the key names the pipeline, the prompt text, the input image's
content and every setting, seed included), draws the misses in batches of ``batch_size`` (pictures
to edit are batched with others of the same size), stores each finished batch as PNG, and returns
the images in order. Every picture gets its own generator seeded with ``Rendering.seed``: the
same picture comes back on every run, and drawn alone or in a batch it differs at most by the
rounding of batched kernels (one level in 255 in ``benchmarks/imagine.py``).

Example:
    >>> gen = load_generator({"model": "timbrooks/instruct-pix2pix"})
    >>> drawn = draw(gen, [Picture("make it red", image="dress.jpg")], Rendering(steps=20))
    >>> drawn[0].image.size
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from cir.cache import CacheEntry, fingerprint_image, make_key
from cir.images import load_image
from cir.types import ImageLike


@dataclass(frozen=True)
class Rendering:
    """How a picture is drawn: the sampling settings of a diffusers pipeline.

    Unset (``None``) values keep the pipeline's own default.

    Attributes:
        steps: denoising steps (``num_inference_steps``).
        guidance: classifier-free guidance scale (``guidance_scale``; FLUX.1 Kontext and
            InstructPix2Pix read it as text guidance).
        true_cfg: true classifier-free guidance with a negative prompt (``true_cfg_scale``,
            Qwen-Image and Qwen-Image-Edit).
        image_guidance: how closely an edit keeps the input image (``image_guidance_scale``,
            InstructPix2Pix).
        negative_prompt: what the picture should not show.
        width / height: output size in pixels (editing pipelines may derive it from the input).
        seed: seed of every picture's generator; the same seed gives the same picture.

    Example:
        >>> Rendering(steps=50, true_cfg=4.0, negative_prompt=" ", width=512, height=512)
    """

    steps: int = 50
    guidance: float | None = None
    true_cfg: float | None = None
    image_guidance: float | None = None
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value < 16 or value % 8):
                raise ValueError(f"{name} must be a multiple of 8 and >= 16, got {value}")
        for name in ("guidance", "true_cfg", "image_guidance"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    @property
    def rendering(self) -> Rendering:
        """The drawing settings alone (stage params inherit this class)."""
        names = [f.name for f in dataclasses.fields(Rendering)]
        return Rendering(**{n: getattr(self, n) for n in names})

    def call_arguments(self) -> dict[str, Any]:
        """Keyword arguments of the pipeline call for the settings that are set."""
        names = {
            "steps": "num_inference_steps",
            "guidance": "guidance_scale",
            "true_cfg": "true_cfg_scale",
            "image_guidance": "image_guidance_scale",
            "negative_prompt": "negative_prompt",
            "width": "width",
            "height": "height",
        }
        return {arg: getattr(self, n) for n, arg in names.items() if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.rendering)


@dataclass(frozen=True)
class Picture:
    """One picture to draw: the prompt, and the image to edit (None: draw from the text)."""

    prompt: str
    image: ImageLike | None = None


@dataclass(frozen=True)
class Drawn:
    """A drawn picture, its cache key, and whether it came from the cache."""

    image: Image.Image
    key: str
    cached: bool


def picture_key(generator: Any, picture: Picture, rendering: Rendering, stage: str) -> dict:
    """The parts of a picture's cache key (``make_key`` hashes them)."""
    return {
        "stage": stage,
        "model": generator.identity,
        "revision": generator.revision,
        "task": "text" if picture.image is None else "edit",
        "prompt": picture.prompt,
        "image": None if picture.image is None else fingerprint_image(picture.image),
        "settings": rendering.to_dict(),
    }


def draw(
    generator: Any,
    pictures: Sequence[Picture],
    rendering: Rendering,
    *,
    cache: Any = None,
    stage: str = "imagine",
    batch_size: int = 4,
) -> list[Drawn]:
    """Draw ``pictures`` with ``generator``: cached ones from ``cache``, the rest in batches.

    Identical pictures are drawn once. Each finished batch is stored before the next starts, so
    an interrupted run keeps what it drew.
    """
    generator.check(["edit" if p.image is not None else "text" for p in pictures], rendering)
    parts = [picture_key(generator, p, rendering, stage) for p in pictures]
    keys = [make_key(p) for p in parts]
    found = cache.get_many(keys) if cache is not None else {}
    todo: dict[str, int] = {}
    for position, key in enumerate(keys):
        if key not in found:
            todo.setdefault(key, position)
    for batch in _batches([(k, pictures[i]) for k, i in todo.items()], batch_size):
        images = generator.draw([picture for _, picture in batch], rendering)
        fresh = dict(zip((k for k, _ in batch), images, strict=True))
        if cache is not None:
            cache.put_many(CacheEntry(parts[todo[k]], im, kind="image") for k, im in fresh.items())
        found.update(fresh)
    return [Drawn(found[k], k, k not in todo) for k in keys]


def _batches(items: list[tuple[str, Picture]], size: int) -> list[list[tuple[str, Picture]]]:
    """Batches of at most ``size``; pictures to edit are loaded and grouped by their size."""
    groups: dict[Any, list] = defaultdict(list)
    for key, picture in items:
        if picture.image is None:
            groups["text"].append((key, picture))
        else:
            image = load_image(picture.image)
            groups[image.size].append((key, Picture(picture.prompt, image)))
    return [g[s : s + size] for g in groups.values() for s in range(0, len(g), size)]
