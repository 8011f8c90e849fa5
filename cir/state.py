"""Helpers every stage uses on the query states: the reference image, embeddings, cache counts.

They live one floor below the stages (beside :class:`~cir.context.Context`) so that the
generation engine, the re-rankers and user-written stages share one implementation of each rule:
where a query's reference image comes from, what makes an embedding a single query vector, and
how embeddings from different encoders are refused.

Example:
    >>> image = resolve_reference(state, ctx, "caption")     # a path or a PIL image
    >>> drawn = resolve_image(state, ctx, "data.imagined", "encode_image")
    >>> q = stack_vectors(states, "query", "retrieve")        # (Q, D) float32
    >>> put_embedding(state, "query", q[0], encoder_key)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from cir.errors import ConfigError, DataError
from cir.types import ImageLike, QueryState, StageRecord

if TYPE_CHECKING:
    import torch

    from cir.context import Context


def resolve_reference(state: QueryState, ctx: Context, stage: str) -> ImageLike:
    """The query's reference image: its path or PIL image, else the index's file for its id.

    Paths are returned unread, so a cached answer or embedding never decodes the image.

    Raises:
        DataError: the query has no reference, or its ``reference_id`` is not an image of the
            index (or the index keeps no image paths).
    """
    query = state.query
    if query.reference is not None:
        return query.reference
    if query.reference_id is not None:
        index = ctx.index
        has = index is not None and index.has(query.reference_id)
        path = index.path(query.reference_id) if has else None
        if path is None:
            raise DataError(
                f"query {query.id!r}: reference_id {query.reference_id!r} is not an image of the "
                "index (or the index keeps no image paths); pass Query(reference=<path>) instead"
            )
        return path
    raise DataError(
        f"query {query.id!r} has no reference image, but stage {stage!r} needs one; "
        "give Query(reference=<path or PIL image>) or reference_id=<gallery id>"
    )


def check_source(value: str, query_field: str) -> None:
    """Refuse a source field other than ``query_field`` or ``data.<name>`` (ValueError)."""
    if value != query_field and not (value.startswith("data.") and len(value) > 5):
        raise ValueError(
            f"source field must be {query_field!r} or 'data.<name>' (written by an earlier "
            f"stage), got {value!r}"
        )


def resolve_image(state: QueryState, ctx: Context, source: str, stage: str) -> ImageLike:
    """The image ``source`` names: the reference (``query.image``), or one an earlier stage left
    in ``data.<name>`` (a picture the pipeline drew)."""
    if source == "query.image":
        return resolve_reference(state, ctx, stage)
    image = state.data.get(source.removeprefix("data."))
    if not isinstance(image, Image.Image | str | Path):
        raise DataError(
            f"query {state.query.id!r}: stage {stage!r} reads an image from {source!r}, "
            f"but no earlier stage left one there"
        )
    return image


def resolve_text(state: QueryState, source: str, stage: str) -> str:
    """The text ``source`` names: the modification (``query.text``), or a text an earlier stage
    left in ``data.<name>`` (a refined instruction)."""
    if source == "query.text":
        return state.query.text
    text = state.data.get(source.removeprefix("data."))
    if not isinstance(text, str):
        raise DataError(
            f"query {state.query.id!r}: stage {stage!r} reads a text from {source!r}, "
            "but no earlier stage left one there"
        )
    return text


def query_vector(state: QueryState, name: str, stage: str) -> torch.Tensor:
    """Embedding ``name`` of ``state`` as one 1-D float32 vector.

    A (1, D) matrix is squeezed; an (N, D) matrix with N > 1 must be combined first.
    """
    if name not in state.embeddings:
        raise ConfigError(
            f"stage {stage!r}: query {state.query.id!r} has no embedding {name!r}; "
            f"it has: {', '.join(sorted(state.embeddings)) or 'none'}"
        )
    return as_query_vector(state.embeddings[name], name, stage).float()


def as_query_vector(embedding: torch.Tensor, name: str, stage: str) -> torch.Tensor:
    """A 1-D query vector from an embedding; (1, D) is squeezed, (N, D) needs combining first."""
    if embedding.dim() == 2 and embedding.shape[0] == 1:
        return embedding[0]
    if embedding.dim() != 1:
        raise ConfigError(
            f"stage {stage!r}: embedding {name!r} holds {embedding.shape[0]} vectors; combine "
            "them first (encode_text `combine: mean`, or an `ensemble` stage)"
        )
    return embedding


def stack_vectors(
    states: Sequence[QueryState], name: str, stage: str, device: str | torch.device | None = None
) -> torch.Tensor:
    """Embedding ``name`` of every state as one float32 (Q, D) tensor (on ``device``)."""
    import torch

    stacked = torch.stack([query_vector(s, name, stage) for s in states])
    return stacked.to(device) if device is not None else stacked


def embedding_matrix(state: QueryState, name: str) -> torch.Tensor:
    """Embedding ``name`` as a float32 (N, D) matrix (one vector becomes (1, D))."""
    emb = state.embeddings[name].float()
    return emb.unsqueeze(0) if emb.dim() == 1 else emb


def shared_encoder(states: Sequence[QueryState], names: Sequence[str], stage: str) -> str:
    """The one encoder key behind embeddings ``names``; refuses a mix of encoders."""
    keys = {s.encoders.get(n, "") for s in states for n in names}
    if len(keys) > 1:
        raise ConfigError(
            f"stage {stage!r} combines embeddings from different encoders "
            f"({', '.join(sorted(keys))}); encode every input with the same model"
        )
    return keys.pop() if keys else ""


def put_embedding(state: QueryState, name: str, vector: torch.Tensor, encoder: str) -> None:
    """Write embedding ``name`` (float32, on the host) with the key of the encoder behind it."""
    state.embeddings[name] = vector.detach().float().cpu()
    state.encoders[name] = encoder


def count_cache(record: StageRecord, hits: int, misses: int) -> None:
    """Add cache hits and misses to a stage's trace record."""
    record.cache_hits += hits
    record.cache_misses += misses
