"""Import embeddings made by clip-retrieval (``clip inference``) as a cir index, without encoding.

clip-retrieval writes one pair of files per part ``N``::

    img_emb/img_emb_N.npy            (rows, D) float16 or float32, L2-normalised
    metadata/metadata_N.parquet      one row per embedding: image_path and/or url, caption, ...

Row ``i`` of ``img_emb_N.npy`` belongs to row ``i`` of ``metadata_N.parquet``. An image's id is
its ``image_path`` (else its ``url``). Every file is treated as hostile: arrays are opened
without pickles and memory-mapped, and shapes, dtypes, values, row counts and ids are checked
before anything is written.

Example:
    >>> index = import_clip_retrieval("laion_part/", "my_index", model="ViT-L-14/openai")
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from cir.errors import ConfigError, DataError

ID_COLUMNS = ("image_path", "url")
_PART = re.compile(r"^img_emb_(\d+)\.npy$")
CHECK_ROWS = 65536


def import_clip_retrieval(
    folder: str | Path,
    out: str | Path,
    model: str,
    pretrained: str | None = None,
    preprocessing: str = "default",
    dtype: str = "fp16",
):
    """Read clip-retrieval's ``img_emb``/``metadata`` folders into a ``GalleryIndex`` at ``out``.

    Args:
        folder: the output folder of ``clip inference`` (holding ``img_emb/`` and ``metadata/``).
        out: the new index folder.
        model: the encoder that made the embeddings (as for ``cir index build --model``);
            queries are then checked against it.
        pretrained: open_clip weights tag for a bare architecture name.
        preprocessing: the image preprocessing the embeddings were made with.
        dtype: storage dtype of the index.

    Raises:
        DataError: a missing part, a bad array or table, or duplicate ids (nothing is written).
    """
    from cir.index import GalleryIndex

    parts = _parts(Path(folder))
    arrays = [_array(path) for path, _ in parts]
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise DataError(
            f"the img_emb files have different dimensions {sorted(dims)}; use one model"
        )
    ids, paths = [], []
    for (_, meta_path), array in zip(parts, arrays, strict=True):
        part_ids, part_paths = _metadata(meta_path, len(array))
        ids += part_ids
        paths += part_paths
    rows = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    identity = _identity(model, pretrained, preprocessing, dims.pop())
    keep_paths = paths if all(p is not None for p in paths) else None
    index = GalleryIndex.from_embeddings(
        ids, torch.from_numpy(np.array(rows)), identity, keep_paths, dtype=dtype
    )
    index.save(out)
    return index


def _parts(folder: Path) -> list[tuple[Path, Path]]:
    emb_dir, meta_dir = folder / "img_emb", folder / "metadata"
    if not emb_dir.is_dir() or not meta_dir.is_dir():
        raise DataError(
            f"{folder} is not a clip-retrieval output folder: it needs img_emb/ and metadata/ "
            "(img_emb/img_emb_0.npy with metadata/metadata_0.parquet, ...)"
        )
    numbered = sorted((int(m.group(1)), p) for p in emb_dir.iterdir() if (m := _PART.match(p.name)))
    if not numbered:
        raise DataError(f"{emb_dir} holds no img_emb_N.npy file")
    pairs = []
    for number, emb in numbered:
        meta = meta_dir / f"metadata_{number}.parquet"
        if not meta.is_file():
            raise DataError(f"{emb} has no metadata: {meta} is missing")
        pairs.append((emb, meta))
    return pairs


def _array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable .npy array ({exc}); pickles are refused"
        ) from None
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise DataError(f"{path} has shape {array.shape}; expected (rows, dimension) embeddings")
    if array.dtype not in (np.float16, np.float32, np.float64):
        raise DataError(f"{path} holds {array.dtype} values; expected float16 or float32")
    for start in range(0, len(array), CHECK_ROWS):
        block = np.asarray(array[start : start + CHECK_ROWS], dtype=np.float32)
        bad = ~np.isfinite(block).all(axis=1) | (np.linalg.norm(block, axis=1) < 1e-6)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path} row {row} is not a usable embedding (NaN, infinite or zero); "
                f"{int(bad.sum())} such row(s) in rows {start}-{start + len(block) - 1}"
            )
    return array


def _metadata(path: Path, rows: int) -> tuple[list[str], list[str | None]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("reading parquet metadata needs pyarrow: pip install pyarrow") from exc

    try:
        table = pq.read_table(path, columns=None)
    except Exception as exc:  # pyarrow raises many error types
        raise DataError(f"{path} is not a readable parquet table ({str(exc)[:200]})") from None
    present = [c for c in ID_COLUMNS if c in table.column_names]
    if not present:
        raise DataError(f"{path} has neither an image_path nor a url column: {table.column_names}")
    if table.num_rows != rows:
        raise DataError(
            f"{path} has {table.num_rows} rows but its img_emb file has {rows}; "
            "each embedding needs its metadata row"
        )
    ids = table.column(present[0]).to_pylist()
    bad = [i for i, v in enumerate(ids) if not isinstance(v, str) or not v]
    if bad:
        raise DataError(f"{path}: {present[0]} of row {bad[0]} is {ids[bad[0]]!r}, not a string")
    paths = table.column("image_path").to_pylist() if "image_path" in present else [None] * rows
    return ids, paths


def _identity(model: str, pretrained: str | None, preprocessing: str, dim: int):
    from cir.models.encoder import EncoderIdentity, check_preprocessing
    from cir.models.spec import parse_spec

    parsed = parse_spec(model, pretrained)
    return EncoderIdentity(
        family=parsed.family,
        model=parsed.model,
        pretrained=parsed.pretrained,
        spec=parsed.spec,
        preprocessing=check_preprocessing(preprocessing),
        dim=dim,
    )
