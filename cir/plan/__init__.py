"""A memory plan for a pipeline, made before anything is downloaded.

For each stage: the models it loads, their parameter count and estimated weight and KV-cache
memory, and which models are resident while it runs (a run loads a model when the first stage
naming it starts and releases it after the last one). The peak is the largest stage. Sizes come
from what each model publishes as metadata only — ``config.json`` (read from a local folder, the
Hugging Face cache, or fetched alone from the hub), a safetensors index or header, a diffusers
pipeline's ``model_index.json`` and its components' configs — and parameter counts from building
the architecture on PyTorch's ``meta`` device (no memory).

Example:
    >>> plan = plan_pipeline(load_pipeline("best"), device="cuda", device_bytes=24 * 2**30)
    >>> print(plan.table())
    >>> plan.warnings
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cir.context import Context
from cir.errors import ConfigError
from cir.plan.sizes import GiB, ModelEstimate, estimate
from cir.resources import ModelUse

__all__ = ["GiB", "ModelEstimate", "Plan", "StagePlan", "estimate", "plan_pipeline"]


@dataclass
class StagePlan:
    stage: str
    models: list[str]
    resident: list[str]
    bytes: int


@dataclass
class Plan:
    """A pipeline's memory plan; ``table()`` prints it, ``warnings`` says what does not fit."""

    pipeline: str
    device: str
    device_bytes: int | None
    device_note: str
    models: dict[str, ModelEstimate]
    stages: list[StagePlan]
    extra_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def peak(self) -> StagePlan | None:
        return max(self.stages, key=lambda s: s.bytes, default=None)

    def table(self) -> str:
        from cir.cli._common import format_table

        models = [
            [m.name, m.kind, _count(m.params), m.dtype, _gib(m.weight_bytes), _gib(m.kv_bytes),
             m.source + (f" ({m.note})" if m.note else "")]
            for m in self.models.values()
        ]  # fmt: skip
        stages = [[s.stage, ", ".join(s.resident) or "-", _gib(s.bytes)] for s in self.stages]
        peak = self.peak
        lines = [
            format_table(
                ["model", "kind", "params", "dtype", "weights", "KV cache", "from"], models
            ),
            "",
            format_table(["stage", "resident models", "memory"], stages),
            "",
            f"peak: {_gib(peak.bytes if peak else 0)} during stage {peak.stage if peak else '-'}"
            + (f" (+{_gib(self.extra_bytes)} gallery index)" if self.extra_bytes else ""),
            f"device: {self.device}, {_gib(self.device_bytes)} ({self.device_note})",
        ]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])

    def to_dict(self) -> dict[str, Any]:
        peak = self.peak
        return {
            "pipeline": self.pipeline,
            "device": self.device,
            "device_bytes": self.device_bytes,
            "models": {k: vars(m) | {"total": m.total} for k, m in self.models.items()},
            "stages": [vars(s) for s in self.stages],
            "peak_bytes": (peak.bytes if peak else 0) + self.extra_bytes,
            "peak_stage": peak.stage if peak else None,
            "warnings": self.warnings,
        }


def plan_pipeline(
    pipeline: Any,
    device: str = "cuda",
    device_bytes: int | None = None,
    gallery_size: int = 0,
) -> Plan:
    """The memory plan of ``pipeline`` on ``device`` (``cuda`` or ``cpu``).

    Args:
        device_bytes: the device's memory; default: the GPU's (or the host's for ``cpu``),
            else 24 GiB assumed for ``cuda`` on a machine without one (said in the plan).
        gallery_size: images in the gallery index held on the device (fp16 rows).
    """
    ctx = Context(encoder=pipeline.encoder)
    captions = getattr(pipeline, "gallery_captions", None)  # made before the stages run
    steps = ([captions.stage()] if captions is not None else []) + list(pipeline.stages)
    uses = [_uses(stage, ctx) for stage in steps]
    estimates: dict[str, ModelEstimate] = {}
    for stage_uses in uses:
        for use in stage_uses:
            if use.name not in estimates:
                estimates[use.name] = estimate(use, device)
    stages = _residency(steps, uses, estimates)
    size, note = _device_memory(device, device_bytes)
    dim = _encoder_dim(estimates)
    plan = Plan(pipeline.name, device, size, note, estimates, stages, gallery_size * dim * 2)
    plan.warnings = _warnings(plan)
    return plan


def _uses(stage: Any, ctx: Context) -> list[ModelUse]:
    try:
        return stage.models(ctx)
    except ConfigError:
        return []  # an encoding stage with no encoder declared: the index decides at run time


def _residency(stages, uses, estimates) -> list[StagePlan]:
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for position, stage_uses in enumerate(uses):
        for use in stage_uses:
            first.setdefault(use.name, position)
            last[use.name] = position
    out = []
    for position, (stage, stage_uses) in enumerate(zip(stages, uses, strict=True)):
        resident = [n for n in first if first[n] <= position <= last[n]]
        total = sum(estimates[n].total for n in resident)
        out.append(StagePlan(stage.instance, [u.name for u in stage_uses], resident, total))
    return out


# ---------------------------------------------------------------------- estimating one model
def _encoder_dim(estimates: dict[str, ModelEstimate]) -> int:
    for m in estimates.values():
        if m.kind == "encoder" and m.note.endswith("-d embeddings"):
            return int(m.note.split("-")[0])
    return 768


# ---------------------------------------------------------------------- the device
def _device_memory(device: str, given: int | None) -> tuple[int | None, str]:
    if given is not None:
        return given, "as given"
    if device == "cpu":
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, "host memory"
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    return 24 * GiB, "assumed: no GPU on this machine; set --memory"


def _warnings(plan: Plan) -> list[str]:
    out = [
        f"the size of {m.name} is unknown ({m.source}); the peak leaves it out"
        for m in plan.models.values()
        if m.weight_bytes is None
    ]
    peak = plan.peak
    if peak is None or plan.device_bytes is None:
        return out
    need = peak.bytes + plan.extra_bytes
    if need > plan.device_bytes:
        out.append(
            f"the peak ({_gib(need)}, stage {peak.stage}: {', '.join(peak.resident)}) exceeds "
            f"the device ({_gib(plan.device_bytes)}). To lower it: load in a smaller dtype "
            "(dtype: bfloat16 or float16), shorten the KV cache (max_model_len, max_num_seqs), "
            "split the model over GPUs (tensor_parallel_size), offload a generator's idle "
            "components to the host (generator: {offload: model}), pick a smaller model "
            "(--set stages.<stage>.llm.model=...), or serve it from another machine "
            "(backend: openai)"
        )
    return out


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / GiB:.2f} GiB"


def _count(value: int | None) -> str:
    if value is None:
        return "?"
    return f"{value / 1e9:.2f} B" if value >= 1e9 else f"{value / 1e6:.1f} M"
