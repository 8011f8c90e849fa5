"""What the encoding stages share: cache keys naming their encoder, and the embedding cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def encoder_cache_parts(stage: str, encoder: Any) -> dict[str, Any]:
    """The part of a cache key that names the encoder (identity and local weights revision)."""
    from cir.cache import model_revision

    identity = encoder.identity
    return {
        "stage": stage,
        "model": identity.key,
        "encoder": identity.to_dict(),
        "revision": model_revision(identity.model),
    }


def cached_embeddings(
    cache: Any,
    base_parts: dict[str, Any],
    inputs: Sequence[dict[str, Any]],
    compute: Callable[[list[int]], torch.Tensor],
) -> tuple[torch.Tensor, list[bool]]:
    """Embeddings for ``inputs`` (one row each) with the content cache in front.

    Args:
        cache: a ``ContentCache`` or None (then everything is computed).
        base_parts: the key parts shared by every input (``encoder_cache_parts``).
        inputs: per input, the key parts that identify it (``{"text": ...}``, ``{"image": sha}``).
        compute: embeds the inputs at the given positions, one row each.

    Returns:
        The (N, D) embeddings and, per input, whether it came from the cache.
    """
    if cache is None or not inputs:
        return compute(list(range(len(inputs)))), [False] * len(inputs)
    from cir.cache import CacheEntry, make_key

    parts = [{**base_parts, **item} for item in inputs]
    keys = [make_key(p) for p in parts]
    found = cache.get_many(set(keys))
    missing: dict[str, int] = {}
    for position, key in enumerate(keys):
        if key not in found:
            missing.setdefault(key, position)
    if missing:
        fresh = compute(list(missing.values())).cpu()
        entries = [
            CacheEntry(parts[i], row, kind="embedding")
            for i, row in zip(missing.values(), fresh, strict=True)
        ]
        cache.put_many(entries)
        found.update(zip(missing, fresh, strict=True))
    return torch.stack([found[k] for k in keys]), [k not in missing for k in keys]
