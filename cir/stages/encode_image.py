"""``encode_image``: the reference image's CLIP embedding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cir.models.shared import resolve_encoder
from cir.stages._encoders import cached_embeddings, encoder_cache_parts
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import check_source, count_cache, put_embedding, resolve_image
from cir.types import ImageLike, QueryState


@dataclass(frozen=True)
class EncodeImageParams:
    model: str | None = None
    pretrained: str | None = None
    output: str = "image"
    batch_size: int = 32
    reuse_index: bool = True
    normalize: bool = True
    source: str = "query.image"

    def __post_init__(self) -> None:
        check_source(self.source, "query.image")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@register_stage
class EncodeImage(Stage):
    """Embed each query's reference image (or a picture the pipeline drew) with a CLIP encoder.

    ``model: null`` (the default) uses the encoder the index was built with. When the reference is
    given by gallery id and ``reuse_index`` is on, the stored gallery embedding is reused instead
    of re-encoding the image. ``normalize: false`` keeps the raw projector output (WeiMoCIR's
    reference code fuses raw features; the stored index embeddings are then not reused).
    ``source: data.<name>`` embeds a picture an earlier stage drew (an ``imagine`` stage).

    Example:
        >>> EncodeImage(output="image")          # in YAML: - stage: encode_image
        >>> EncodeImage(source="data.imagined", output="imagined")
    """

    name = "encode_image"
    Params = EncodeImageParams
    inputs = (Port("{source}", "image", "the image to embed (the reference by default)"),)
    outputs = (Port("embeddings.{output}", "vector", "the image's embedding"),)
    uses_encoder = True
    held = ("encoder",)

    def setup(self, ctx: Context) -> None:
        self.encoder = resolve_encoder(
            ctx, self.instance, self.params.model, self.params.pretrained
        )
        self._key_parts = encoder_cache_parts(self.name, self.encoder)

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        key = self.encoder.identity.key
        pending: list[tuple[QueryState, ImageLike]] = []
        for state in states:
            stored = self._stored_embedding(state, ctx, key)
            if stored is not None:
                put_embedding(state, self.params.output, stored, key)
                count_cache(self.record(state), 1, 0)
                self.record(state).notes["reused_index_embedding"] = True
            else:
                source = resolve_image(state, ctx, self.params.source, self.instance)
                pending.append((state, source))
        if pending:
            self._encode(pending, ctx, key)
        return states

    def _encode(self, pending: list[tuple[QueryState, ImageLike]], ctx: Context, key: str) -> None:
        from cir.cache import fingerprint_image
        from cir.images import load_image

        sources = [source for _, source in pending]
        inputs = (
            [{"image": fingerprint_image(s), "normalize": self.params.normalize} for s in sources]
            if ctx.cache is not None
            else [{}] * len(sources)
        )
        vectors, cached = cached_embeddings(
            ctx.cache,
            self._key_parts,
            inputs,
            lambda rows: self.encoder.encode_images(
                [load_image(sources[i]) for i in rows],
                self.params.batch_size,
                normalize=self.params.normalize,
            ),
        )
        for (state, _), vector, hit in zip(pending, vectors, cached, strict=True):
            put_embedding(state, self.params.output, vector, key)
            count_cache(self.record(state), int(hit), int(not hit))

    def _stored_embedding(self, state: QueryState, ctx: Context, key: str) -> torch.Tensor | None:
        ref_id, index = state.query.reference_id, ctx.index
        p = self.params
        if not (p.reuse_index and p.normalize and p.source == "query.image"):
            return None  # the index stores normalised embeddings of its own images only
        if state.query.reference is not None or ref_id is None:
            return None
        if index is None or index.encoder is None or index.encoder.key != key:
            return None
        if index.encoder.preprocessing != self.encoder.identity.preprocessing:
            return None  # the stored row saw another preprocessing than this stage would apply
        return index.embedding(ref_id) if index.has(ref_id) else None
