"""How a diffusers pipeline is named: the spec dict of a generator, validated, and its key.

A generator is named the way every cir model is: a Hugging Face hub id or a local folder saved
with ``DiffusionPipeline.save_pretrained`` (it holds ``model_index.json``), with how to load it::

    {model: Qwen/Qwen-Image-Edit, dtype: bfloat16, device: cuda, offload: model}

This module imports neither torch nor diffusers, so stages can declare generators cheaply.

Example:
    >>> spec = validate_generator_spec({"model": "Qwen/Qwen-Image-Edit", "dtype": "bfloat16"})
    >>> generator_key({"model": "Qwen/Qwen-Image-Edit", "dtype": "bfloat16"})[0]
    'generator'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from cir.errors import ConfigError
from cir.params import build_params, params_to_dict

Dtype = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class GeneratorSpec:
    """The options of a generator spec.

    Attributes:
        model: a hub id (``Qwen/Qwen-Image-Edit``, ``black-forest-labs/FLUX.1-Kontext-dev``,
            ``timbrooks/instruct-pix2pix``) or a local pipeline folder.
        revision: a branch, tag or commit of a hub model.
        dtype: ``auto`` (float32 on the CPU; bfloat16 on a GPU that supports it, else float16),
            ``float32``, ``float16`` or ``bfloat16``.
        device: ``cuda``, ``cuda:1``, ``cpu``; default: the run's device, else the first GPU
            when there is one.
        offload: on a GPU, ``model`` keeps only the component that is working on the GPU
            (``enable_model_cpu_offload``) and ``sequential`` moves layer by layer (least
            memory, slowest); ``none`` keeps the whole pipeline on the device. Ignored on the CPU.
        variant: a weights variant of the hub repository (``fp16``).
    """

    model: str
    revision: str | None = None
    dtype: Dtype = "auto"
    device: str | None = None
    offload: Literal["none", "model", "sequential"] = "none"
    variant: str | None = None

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("model must name a hub id or a local pipeline folder")


def validate_generator_spec(spec: Any) -> GeneratorSpec:
    """The validated options of ``spec`` (ConfigError naming the valid ones)."""
    if not isinstance(spec, dict):
        raise ConfigError(
            f"a generator spec must be a mapping such as {{model: Qwen/Qwen-Image-Edit}}, "
            f"got {spec!r}"
        )
    return build_params(GeneratorSpec, dict(spec), where="generator")


def generator_key(spec: dict[str, Any]) -> tuple[str, str]:
    """The hashable resource key of a spec (stages naming the same spec share one pipeline)."""
    options = params_to_dict(validate_generator_spec(spec))
    return ("generator", json.dumps(options, sort_keys=True))
