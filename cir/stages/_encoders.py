"""How stages find their CLIP encoder: the one named in params, else the index's own."""

from __future__ import annotations

from cir.errors import ConfigError
from cir.stages.base import Context


def resolve_encoder(ctx: Context, stage: str, model: str | None, pretrained: str | None = None):
    """The shared encoder for ``model`` (or the index's encoder when ``model`` is None).

    Weights are loaded once per (model, tag, device) through ``ctx.resources``; an index built
    with another image preprocessing (e.g. CIReVL's target pad) reuses them with that
    preprocessing.
    """
    from cir.models import load_encoder

    preprocessing = "default"
    if model is None:
        index = ctx.index
        if index is None or index.encoder is None:
            raise ConfigError(
                f"stage {stage!r} has no `model` and there is no index encoder to reuse; "
                f"set stages.{stage}.model=<encoder> or pass an index built with an encoder"
            )
        model, pretrained = index.encoder.spec, None
        preprocessing = index.encoder.preprocessing
    encoder = ctx.resources.get(
        ("encoder", model, pretrained, ctx.device),
        lambda: load_encoder(model, pretrained=pretrained, device=ctx.device),
    )
    if encoder.identity.preprocessing != preprocessing:
        encoder = encoder.with_preprocessing(preprocessing)
    return encoder
