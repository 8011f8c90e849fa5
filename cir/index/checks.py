"""Input checks and conversions shared by GalleryIndex's constructors and editors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cir.errors import DataError
from cir.index import store


def pick_device(device: str | torch.device | None) -> torch.device:
    """The compute device: CUDA when available by default; a bad name is a ConfigError."""
    from cir.models.encoder import resolve_device

    return resolve_device(device)


def identity_dict(encoder: Any) -> dict[str, Any] | None:
    if encoder is None:
        return None
    if isinstance(encoder, dict):
        d = dict(encoder)
    elif hasattr(encoder, "to_dict"):
        d = {**encoder.to_dict(), "key": encoder.key}
    elif hasattr(encoder, "identity"):
        return identity_dict(encoder.identity)
    else:
        raise DataError(f"encoder must be an EncoderIdentity, got {type(encoder).__name__}")
    if "key" not in d:
        from cir.models import EncoderIdentity

        d["key"] = EncoderIdentity.from_dict(d).key
    return d


def check_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):
        raise DataError("ids must be a list of strings, got a single string")
    ids = list(ids)
    bad = [i for i in ids if not isinstance(i, str) or not i]
    if bad:
        raise DataError(f"ids must be non-empty strings; got {bad[:5]!r}")
    seen: set[str] = set()
    dups = sorted({i for i in ids if i in seen or seen.add(i)})
    if dups:
        raise DataError(listing("duplicate id(s)", dups) + "; ids must be unique")
    return ids


def prepare(
    emb: torch.Tensor, n: int, dim: int | None, dtype: str, normalize: bool, ids: list[str]
) -> torch.Tensor:
    if dtype not in store.DTYPES:
        raise DataError(f"unknown storage dtype {dtype!r}; valid: {', '.join(store.DTYPES)}")
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != n:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise DataError(f"embeddings must be a (N, D) tensor with N = {n} ids, got {shape}")
    if dim is not None and emb.shape[1] != dim:
        raise DataError(f"embeddings are {emb.shape[1]}-d but the index holds {dim}-d vectors")
    emb = emb.detach().float()
    finite = torch.isfinite(emb).all(dim=1)
    if not bool(finite.all()):
        bad = [ids[i] for i in torch.nonzero(~finite).flatten().tolist()]
        raise DataError(listing("embeddings with NaN or inf values for id(s)", bad))
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=1)
    return emb.to(store.DTYPES[dtype]).cpu()


def path_strings(paths: Sequence[str | Path] | None, n: int) -> list[str] | None:
    if paths is None:
        return None
    paths = [str(p) for p in paths]
    if len(paths) != n:
        raise DataError(f"got {len(paths)} paths for {n} ids; give one path per id")
    return paths


def check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}")


def listing(what: str, items: list[str]) -> str:
    shown = ", ".join(repr(i) for i in items[:10])
    return f"{what}: {shown}{f' (and {len(items) - 10} more)' if len(items) > 10 else ''}"
