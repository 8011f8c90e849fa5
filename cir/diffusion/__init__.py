"""Image generators: diffusers pipelines that edit a picture or draw one from text.

A generator is named by a spec (:mod:`cir.diffusion.spec`), loaded once per run's resources
(:func:`load_generator`), and asked for pictures through :func:`draw`, which caches every picture
by content as PNG and batches the rest.

Example:
    >>> from cir.diffusion import Picture, Rendering, draw, load_generator
    >>> gen = load_generator({"model": "Qwen/Qwen-Image-Edit", "dtype": "bfloat16"})
    >>> drawn = draw(gen, [Picture("make it red", image="dress.jpg")], Rendering(true_cfg=4.0))
"""

from cir.diffusion.generator import ImageGenerator, check_generator, load_generator
from cir.diffusion.rendering import Drawn, Picture, Rendering, draw, picture_key
from cir.diffusion.spec import GeneratorSpec, generator_key, validate_generator_spec

__all__ = [
    "Drawn",
    "GeneratorSpec",
    "ImageGenerator",
    "Picture",
    "Rendering",
    "check_generator",
    "draw",
    "generator_key",
    "load_generator",
    "picture_key",
    "validate_generator_spec",
]
