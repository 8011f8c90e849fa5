"""Loading a diffusers pipeline by its spec, and drawing batches of pictures with it.

``DiffusionPipeline.from_pretrained`` reads ``model_index.json`` and loads the class it names
(``QwenImageEditPipeline``, ``FluxKontextPipeline``, ``StableDiffusionInstructPix2PixPipeline``,
``QwenImagePipeline``, ``StableDiffusionPipeline``, ...), from a local folder or the hub. A
pipeline whose call takes an ``image`` can edit; text-to-image pipelines draw from text alone.

Example:
    >>> gen = load_generator({"model": "Qwen/Qwen-Image-Edit", "dtype": "bfloat16"})
    >>> gen.draw([Picture("make the car red", image=photo)], Rendering(true_cfg=4.0))
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from cir.cache import model_revision
from cir.diffusion.rendering import Picture, Rendering
from cir.diffusion.spec import GeneratorSpec, generator_key, validate_generator_spec
from cir.errors import BackendError, ConfigError
from cir.resources import Resources, default_resources

EDITORS = "QwenImageEditPipeline, FluxKontextPipeline, StableDiffusionInstructPix2PixPipeline"
_SETTING_ARGS = {
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "true_cfg_scale": "true_cfg",
    "image_guidance_scale": "image_guidance",
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
}


class ImageGenerator:
    """A loaded diffusers pipeline that draws pictures from text or edits given images.

    Args:
        pipeline: the ``DiffusionPipeline``.
        spec: the validated spec it was loaded from.
        device: where it runs.

    Example:
        >>> gen = load_generator({"model": "/models/tiny-pix2pix"})
        >>> gen.can_edit, gen.identity
    """

    def __init__(self, pipeline: Any, spec: GeneratorSpec, device: str) -> None:
        self.pipeline = pipeline
        self.spec = spec
        self.device = device
        self.kind = type(pipeline).__name__
        self.accepts = set(inspect.signature(pipeline.__call__).parameters)
        revision = f"@{spec.revision}" if spec.revision else ""
        self.identity = f"{spec.model}{revision}:{self.kind}:{_dtype_name(pipeline)}"
        self.revision = model_revision(spec.model)

    @property
    def can_edit(self) -> bool:
        """Whether the pipeline takes an image to edit."""
        return "image" in self.accepts

    def check(self, tasks: Sequence[str], rendering: Rendering) -> None:
        """Refuse an edit the pipeline cannot make and settings its call does not take."""
        if "edit" in tasks and not self.can_edit:
            raise ConfigError(
                f"generator {self.spec.model!r} ({self.kind}) draws from text only, but this "
                f"stage edits images; name an image-editing pipeline ({EDITORS})"
            )
        unknown = [arg for arg in rendering.call_arguments() if arg not in self.accepts]
        if unknown:
            valid = sorted(v for k, v in _SETTING_ARGS.items() if k in self.accepts)
            raise ConfigError(
                f"generator {self.spec.model!r} ({self.kind}) does not take "
                f"{', '.join(_SETTING_ARGS[a] for a in unknown)}; its settings are: "
                f"{', '.join(valid)} and seed"
            )

    def draw(self, pictures: Sequence[Picture], rendering: Rendering) -> list[Image.Image]:
        """One pipeline call for ``pictures`` (all edits of same-size images, or all from text)."""
        import torch

        kwargs = rendering.call_arguments()
        kwargs["prompt"] = [p.prompt for p in pictures]
        if "negative_prompt" in kwargs:  # one per picture: editors pair it with each image
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(pictures)
        if pictures[0].image is not None:
            kwargs["image"] = [p.image for p in pictures]
        kwargs["generator"] = [torch.Generator("cpu").manual_seed(rendering.seed) for _ in pictures]
        try:
            with torch.inference_mode():
                images = self.pipeline(output_type="pil", **kwargs).images
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise BackendError(
                f"generator {self.spec.model!r} ({self.kind}) failed on {len(pictures)} "
                f"picture(s): {type(exc).__name__}: {exc}"
            ) from exc
        return [image.convert("RGB") for image in images]

    def close(self) -> None:
        """Drop offloading hooks so the weights can be freed."""
        remove = getattr(self.pipeline, "remove_all_hooks", None)
        if callable(remove):
            remove()


def load_generator(spec: dict[str, Any], resources: Resources | None = None) -> ImageGenerator:
    """The pipeline named by ``spec``, loaded once per ``resources`` (stages share it).

    Raises:
        ConfigError: the spec is invalid, or names a local folder that is not a pipeline.
        BackendError: the pipeline does not load (a damaged folder, no network for a hub id).
    """
    options = validate_generator_spec(spec)
    resources = resources or default_resources
    return resources.get(generator_key(spec), lambda: _load(options), close=lambda gen: gen.close())


def check_generator(spec: dict[str, Any]) -> None:
    """Check a spec and, for a local folder, that it holds a pipeline, without loading it.

    Raises:
        ConfigError: as :func:`load_generator` would, before any weights are read.
    """
    _source(validate_generator_spec(spec).model)


def _load(spec: GeneratorSpec) -> ImageGenerator:
    import torch

    try:
        from diffusers import DiffusionPipeline
    except ImportError as exc:
        raise ConfigError(
            f"generators need diffusers ({exc}); install it with pip install 'cir[imagine]'"
        ) from None
    source = _source(spec.model)
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _torch_dtype(spec.dtype, device)
    try:
        pipeline = DiffusionPipeline.from_pretrained(
            source, dtype=dtype, revision=spec.revision, variant=spec.variant
        )
    except Exception as exc:  # diffusers, transformers, the hub and safetensors raise many kinds
        raise BackendError(
            f"cannot load the diffusers pipeline {spec.model!r} ({type(exc).__name__}: "
            f"{_first_line(exc)}); expected a folder saved with DiffusionPipeline.save_pretrained "
            "(model_index.json and one folder per component) or a reachable hub id"
        ) from None
    _place(pipeline, spec.offload, device)
    pipeline.set_progress_bar_config(disable=True)
    return ImageGenerator(pipeline, spec, device)


def _source(model: str) -> str:
    """``model`` as given; a local path must be a pipeline folder."""
    path = Path(model).expanduser()
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1 or path.exists()
    if not looks_local:
        return model
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ConfigError(
            f"generator folder {str(path)!r} {what}; give a folder saved with "
            "DiffusionPipeline.save_pretrained or a hub id such as Qwen/Qwen-Image-Edit"
        )
    if not (path / "model_index.json").is_file():
        raise ConfigError(
            f"{str(path)!r} is not a diffusers pipeline folder: it has no model_index.json "
            "(save a pipeline with DiffusionPipeline.save_pretrained, or give a hub id)"
        )
    return str(path)


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def _place(pipeline: Any, offload: str, device: str) -> None:
    if device.startswith("cuda") and offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif device.startswith("cuda") and offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        pipeline.to(device)


def _dtype_name(pipeline: Any) -> str:
    return str(getattr(pipeline, "dtype", "")).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"
