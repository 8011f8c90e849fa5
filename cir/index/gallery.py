"""GalleryIndex: L2-normalised gallery embeddings with ids, encoder identity and sidecars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cir.errors import DataError
from cir.index import store
from cir.index.checks import (
    check_ids,
    identity_dict,
    listing,
    path_strings,
    pick_device,
    prepare,
)
from cir.index.compute import ComputePlan, check_compute
from cir.index.ids import IdTable
from cir.index.searching import SearchMixin

if TYPE_CHECKING:
    from cir.models import EncoderIdentity


class GalleryIndex(SearchMixin):
    """Gallery embeddings (fp16 by default) searchable by exact chunked top-k.

    Build one over a folder with :meth:`build`, from precomputed vectors with
    :meth:`from_embeddings`, or open a saved one with :meth:`load`.

    Example:
        >>> idx = GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, 512))
        >>> idx.search(torch.randn(1, 512), k=1)[0].ids
        ('b',)
        >>> idx.save("my_index"); idx = GalleryIndex.load("my_index")
    """

    def __init__(
        self,
        ids: list[str],
        embeddings: torch.Tensor,
        encoder: EncoderIdentity | dict | None = None,
        paths: list[str] | None = None,
        root: str | Path | None = None,
        device: str | torch.device | None = None,
        compute: str = "auto",
    ) -> None:
        self._device = pick_device(device)
        self._compute = check_compute(compute)
        self._plan: tuple[tuple, ComputePlan] | None = None
        self._rows_searcher = None  # the faiss compute path's searcher, built on first use
        self._ids = IdTable(ids)
        self._emb = embeddings.to(self._device)
        self._encoder = identity_dict(encoder)
        self._paths = list(paths) if paths is not None else None
        self._root = str(Path(root).resolve()) if root is not None else None
        self._sidecars: dict[str, tuple[torch.Tensor, dict[str, Any], dict[str, list]]] = {}
        self.skipped: list[dict[str, str]] = []
        self.created: dict[str, Any] = {}
        self.faiss = None  # a FaissSearcher when enabled with use_faiss()
        self.backend = None  # a PositionSearcher when enabled with use_backend()
        self.folder: Path | None = None  # where it was loaded from or last saved

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_embeddings(
        cls,
        ids: Sequence[str],
        embeddings: torch.Tensor,
        encoder: EncoderIdentity | dict | None = None,
        paths: Sequence[str | Path] | None = None,
        dtype: str = "fp16",
        normalize: bool = True,
        device: str | torch.device | None = None,
        compute: str = "auto",
    ) -> GalleryIndex:
        """An index over precomputed embeddings.

        Args:
            ids: unique string ids, one per row.
            embeddings: (N, D) tensor; rows are L2-normalised unless ``normalize=False``.
            encoder: identity of the encoder that made them (checked by :meth:`search`).
            paths: optional image path per row (returned by :meth:`path`).
            dtype: storage dtype, ``fp16`` (default), ``bf16`` or ``fp32``.
            normalize: L2-normalise the rows.
            device: compute device (default: CUDA when available, else CPU).
            compute: how searches multiply: ``auto`` (fastest here, see :attr:`compute_plan`)
                or a path to force, ``fp32``, ``fp16``, ``bf16`` or ``faiss``.

        Raises:
            DataError: duplicate or non-string ids, wrong shapes, non-finite values.
        """
        ids = check_ids(ids)
        emb = prepare(embeddings, len(ids), None, dtype, normalize, ids)
        return cls(ids, emb, encoder, path_strings(paths, len(ids)), None, device, compute)

    @classmethod
    def build(cls, source: Any, encoder: Any, out: str | Path, **options: Any) -> GalleryIndex:
        """Encode a folder (recursively) or a list of image paths; see :func:`cir.index.build`."""
        from cir.index.build import build_index

        return build_index(source, encoder, out, **options)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str | torch.device | None = None,
        mmap: bool = True,
        compute: str = "auto",
    ) -> GalleryIndex:
        """Open a saved index; with ``mmap`` (CPU) the embeddings are read from disk on demand.

        The compute path of searches is chosen here (``compute``, see :meth:`from_embeddings`).
        """
        _, s = store.load(directory, mmap=mmap)
        idx = cls(s.ids, s.embeddings, s.encoder, s.paths, s.root, device, compute)
        idx._sidecars = {n: (t.to(idx._device), m, r) for n, (t, m, r) in s.sidecars.items()}
        idx.skipped, idx.created = s.skipped, s.created
        idx.folder = Path(directory)
        _ = idx.compute_plan
        return idx

    def save(self, directory: str | Path) -> Path:
        """Write the index into ``directory`` atomically; returns the folder."""
        stored = store.Stored(
            ids=self._ids.tolist(),
            embeddings=self._emb,
            paths=self._paths,
            root=self._root,
            encoder=self._encoder,
            sidecars=self._sidecars,
            skipped=self.skipped,
            created=self.created or store.creation_info(),
        )
        store.save(stored, directory)
        self.folder = Path(directory)
        self.backend = None  # an approximate index belongs to the previous generation
        return Path(directory)

    # ----------------------------------------------------------------- contents
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        enc = self._encoder.get("key") if self._encoder else None
        return (
            f"GalleryIndex({len(self)} x {self.dim}, {store.dtype_name(self._emb.dtype)}, "
            f"encoder={enc!r}, device={self._device.type!r})"
        )

    @property
    def ids(self) -> list[str]:
        return self._ids.tolist()

    @property
    def dim(self) -> int:
        return int(self._emb.shape[1])

    @property
    def dtype(self) -> str:
        return store.dtype_name(self._emb.dtype)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def embeddings(self) -> torch.Tensor:
        """(N, D) in the storage dtype, on :attr:`device`."""
        return self._emb

    @property
    def root(self) -> Path | None:
        return Path(self._root) if self._root else None

    @property
    def encoder(self) -> EncoderIdentity | None:
        """The identity of the encoder that made the embeddings (None when unknown)."""
        if self._encoder is None:
            return None
        from cir.models import EncoderIdentity

        fields = {k: v for k, v in self._encoder.items() if k != "key"}
        return EncoderIdentity.from_dict(fields)

    @property
    def encoder_key(self) -> str | None:
        return self._encoder.get("key") if self._encoder else None

    def has(self, id: str) -> bool:
        return id in self._ids

    def position(self, id: str) -> int:
        """Row of ``id``; raises DataError for an unknown id."""
        position = self._ids.find(id) if isinstance(id, str) else -1
        if position < 0:
            raise DataError(
                f"id {id!r} is not in the index ({len(self)} images); "
                "ids are paths relative to the gallery folder (see GalleryIndex.ids)"
            )
        return position

    def embedding(self, id: str) -> torch.Tensor:
        """The stored embedding of ``id`` as a float32 (D,) tensor."""
        return self._emb[self.position(id)].float()

    def path(self, id: str) -> Path | None:
        """The image file of ``id`` (absolute when the index was built from a folder)."""
        if self._paths is None:
            return None
        p = Path(self._paths[self.position(id)])
        return p if p.is_absolute() or self._root is None else Path(self._root) / p

    # ----------------------------------------------------------------- editing
    def add(
        self,
        ids: Sequence[str],
        embeddings: torch.Tensor,
        paths: Sequence[str | Path] | None = None,
        sidecars: dict[str, torch.Tensor | tuple[torch.Tensor, dict[str, list]]] | None = None,
        normalize: bool = True,
    ) -> None:
        """Append rows; ids must be new. Every sidecar needs its rows for the new ids.

        ``sidecars`` maps a sidecar name to its new rows, or to ``(rows, per_row_meta)``.
        """
        ids = check_ids(ids)
        taken = [i for i in ids if i in self._ids]
        if taken:
            raise DataError(listing("id(s) already in the index", taken) + "; remove them first")
        emb = prepare(embeddings, len(ids), self.dim, self.dtype, normalize, ids)
        new_paths = path_strings(paths, len(ids))
        if (self._paths is None) != (new_paths is None) and len(self):
            raise DataError("give paths for the new images exactly when the index has paths")
        new_side = self._sidecar_rows(sidecars or {}, len(ids))
        self._emb = torch.cat([self._emb, emb.to(self._device)])
        if new_paths is not None:
            self._paths = (self._paths or []) + new_paths
        for name, (rows, row_meta) in new_side.items():
            t, meta, old_rows = self._sidecars[name]
            merged = {k: list(v) + list(row_meta[k]) for k, v in old_rows.items()}
            self._sidecars[name] = (torch.cat([t, rows.to(t)]), meta, merged)
        self._ids = IdTable(self._ids.tolist() + ids)
        self.faiss = self.backend = None
        self._rows_searcher = None

    def _sidecar_rows(self, given: dict, n: int) -> dict[str, tuple[torch.Tensor, dict]]:
        missing = sorted(set(self._sidecars) - set(given))
        unknown = sorted(set(given) - set(self._sidecars))
        if missing or unknown:
            raise DataError(
                f"add() needs rows for every sidecar of the index ({sorted(self._sidecars)}); "
                f"missing: {missing}, unknown: {unknown}"
            )
        out = {}
        for name, value in given.items():
            rows, row_meta = value if isinstance(value, tuple) else (value, {})
            t, _, old_rows = self._sidecars[name]
            if tuple(rows.shape) != (n, *t.shape[1:]):
                raise DataError(
                    f"sidecar {name!r}: rows of shape {tuple(rows.shape)}, "
                    f"expected {(n, *t.shape[1:])}"
                )
            if set(row_meta) != set(old_rows) or any(len(v) != n for v in row_meta.values()):
                raise DataError(
                    f"sidecar {name!r}: per-row meta must give {sorted(old_rows)} "
                    f"with {n} entries each"
                )
            out[name] = (rows, row_meta)
        return out

    def subset(self, positions: Sequence[int] | torch.Tensor) -> GalleryIndex:
        """A new index of the rows at ``positions`` (with their sidecar rows), same encoder."""
        keep = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        rows = keep.tolist()
        paths = [self._paths[p] for p in rows] if self._paths is not None else None
        sub = GalleryIndex(
            self._ids.take(rows), self._emb[keep.to(self._device)], self._encoder, paths,
            self._root, self._device, self._compute,
        )  # fmt: skip
        for name, (t, meta, per_row) in self._sidecars.items():
            kept = {k: [v[p] for p in rows] for k, v in per_row.items()}
            sub._sidecars[name] = (t[keep.to(t.device)], meta, kept)
        return sub

    def remove(self, ids: Sequence[str]) -> None:
        """Drop the rows of ``ids``; unknown ids are an error (nothing is removed then)."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i not in self._ids]
        if unknown:
            raise DataError(listing("cannot remove unknown id(s)", unknown))
        drop = {self._ids.find(i) for i in ids}
        keep_list = [p for p in range(len(self)) if p not in drop]
        keep = torch.tensor(keep_list, dtype=torch.long)
        self._emb = self._emb[keep.to(self._device)]
        self._ids = IdTable(self._ids.take(keep_list))
        if self._paths is not None:
            self._paths = [self._paths[p] for p in keep_list]
        for name, (t, meta, rows) in self._sidecars.items():
            kept = {k: [v[p] for p in keep_list] for k, v in rows.items()}
            self._sidecars[name] = (t[keep.to(t.device)], meta, kept)
        self.faiss = self.backend = None
        self._rows_searcher = None

    # ----------------------------------------------------------------- sidecars
    def set_sidecar(
        self,
        name: str,
        tensor: torch.Tensor,
        meta: dict[str, Any] | None = None,
        rows: dict[str, list] | None = None,
    ) -> None:
        """Attach per-image extras saved with the index and kept aligned by add/remove.

        Args:
            name: sidecar name, e.g. ``"captions"``.
            tensor: (N, ...) values, row i belonging to image i.
            meta: JSON values about the whole sidecar (model, prompt hash, ...).
            rows: JSON lists with one entry per image (e.g. the caption strings), kept aligned.

        Example:
            >>> idx.set_sidecar("captions", text_emb, {"model": "blip2"}, {"text": captions})
        """
        if tensor.ndim < 1 or tensor.shape[0] != len(self):
            raise DataError(f"sidecar {name!r} needs {len(self)} rows, got {tuple(tensor.shape)}")
        rows = {k: list(v) for k, v in (rows or {}).items()}
        bad = [k for k, v in rows.items() if len(v) != len(self)]
        if bad:
            raise DataError(f"sidecar {name!r}: per-row meta {bad} must have {len(self)} entries")
        self._sidecars[name] = (tensor.to(self._device), dict(meta or {}), rows)

    def sidecar(self, name: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(tensor, meta)`` of a sidecar; ``meta`` also holds the per-row lists."""
        if name not in self._sidecars:
            raise DataError(f"no sidecar {name!r} in the index; present: {sorted(self._sidecars)}")
        t, meta, rows = self._sidecars[name]
        return t, {**meta, **rows}

    @property
    def sidecars(self) -> list[str]:
        return sorted(self._sidecars)
