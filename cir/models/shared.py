"""Encoders shared through a run's resources: one load per (model, device, dtype).

Which encoder a stage uses, in order: the stage's own ``model``; else the gallery index's encoder
(gallery and reference images then go through the same preprocessing); else the pipeline's
declared ``encoder:``. Two preprocessings of one model share its weights.

Example:
    >>> encoder = resolve_encoder(ctx, "encode_text", model=None)
    >>> spec = EncoderSpec("ViT-L-14/openai", preprocessing="targetpad")
    >>> encoder = shared_encoder(resources, spec)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cir.errors import ConfigError
from cir.models.spec import EncoderSpec, parse_spec
from cir.resources import ModelUse, Resources

if TYPE_CHECKING:
    from cir.context import Context
    from cir.models.encoder import Encoder


def stage_encoder_spec(ctx: Context, stage: str, model: str | None, pretrained=None) -> EncoderSpec:
    """The encoder a stage with params ``model``/``pretrained`` uses in this context."""
    if model is not None:
        return EncoderSpec(model, pretrained)
    index = ctx.index
    if index is not None and index.encoder is not None:
        ident = index.encoder
        return EncoderSpec(ident.spec, preprocessing=ident.preprocessing)
    if ctx.encoder is not None:
        return ctx.encoder
    raise ConfigError(
        f"stage {stage!r} has no `model`, the pipeline declares no `encoder:` and there is no "
        f"index encoder to reuse; set stages.{stage}.model=<encoder>, add an `encoder:` section "
        "or pass an index built with an encoder"
    )


def encoder_key(spec: EncoderSpec, device: Any = None) -> tuple:
    """The resource key of an encoder's weights (preprocessing is not part of it)."""
    from cir.models.encoder import resolve_device

    canonical = parse_spec(spec.model, spec.pretrained).spec
    return ("encoder", canonical, str(resolve_device(device)), spec.dtype)


def shared_encoder(resources: Resources, spec: EncoderSpec, device: Any = None) -> Encoder:
    """The encoder for ``spec``, loaded once per ``resources``, with ``spec``'s preprocessing."""
    from cir.models import load_encoder

    encoder = resources.get(
        encoder_key(spec, device),
        lambda: load_encoder(
            spec.model, pretrained=spec.pretrained, device=device, dtype=spec.dtype
        ),
    )
    if encoder.identity.preprocessing != spec.preprocessing:
        encoder = encoder.with_preprocessing(spec.preprocessing)
    return encoder


def resolve_encoder(ctx: Context, stage: str, model: str | None, pretrained=None) -> Encoder:
    """The shared encoder a stage uses (see the module's order of precedence)."""
    spec = stage_encoder_spec(ctx, stage, model, pretrained)
    return shared_encoder(ctx.resources, spec, ctx.device)


def encoder_use(ctx: Context, stage: str, params: Any) -> ModelUse:
    """The :class:`ModelUse` of a stage whose params have ``model`` and ``pretrained``."""
    spec = stage_encoder_spec(ctx, stage, params.model, getattr(params, "pretrained", None))
    return ModelUse(encoder_key(spec, ctx.device), "encoder", spec.label, spec.to_dict(), "model")
