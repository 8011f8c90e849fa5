"""Write a folder of images as webdataset tar shards or parquet shards (img2dataset's layouts).

For tests and examples of building an index from shards (:mod:`cir.index.shards`).

Example:
    >>> write_shards("photos", "shards", kind="tar", per_shard=100)
    [PosixPath('shards/part-00000.tar'), ...]
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from cir.images import IMAGE_EXTENSIONS


def write_shards(
    folder: str | Path, out: str | Path, kind: str = "tar", per_shard: int = 100
) -> list[Path]:
    """Write the images of ``folder`` (top level, by name) into shards in ``out``.

    Each image keeps its file name as member name (tar: ``<stem><suffix>`` beside a
    ``<stem>.json``) or key (parquet: ``key`` = stem, bytes in a ``jpg`` column).
    """
    images = sorted(
        p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, start in enumerate(range(0, len(images), per_shard)):
        group = images[start : start + per_shard]
        path = out / f"part-{n:05d}.{'tar' if kind == 'tar' else 'parquet'}"
        (_write_tar if kind == "tar" else _write_parquet)(path, group)
        written.append(path)
    return written


def _write_tar(path: Path, images: list[Path]) -> None:
    with tarfile.open(path, "w") as tar:
        for image in images:
            _add(tar, image.name, image.read_bytes())
            _add(tar, f"{image.stem}.json", json.dumps({"source": image.name}).encode())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_parquet(path: Path, images: list[Path]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"key": [p.stem for p in images], "jpg": [p.read_bytes() for p in images]})
    pq.write_table(table, path, row_group_size=4)
