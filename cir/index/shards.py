"""Images inside shards: webdataset ``.tar`` files and parquet files, read in place.

Large collections come as shards (img2dataset, clip-retrieval): tar files whose members are
grouped by key (``000123.jpg``, ``000123.json``, ...) and parquet files with one image per row.
cir indexes the image members where they lie, without extracting anything to disk:

- a member's id is ``<shard path relative to the gallery root>/<member name>``, e.g.
  ``part-00000.tar/000123.jpg``; for parquet rows the name is the ``key`` column (else the row
  number, ``row-00000042``) plus the image format's extension, e.g.
  ``part-00000.parquet/000123.jpg``;
- that id, read as a path under the gallery root, is a **member path**: :func:`read_member_path`
  (and so :func:`cir.images.load_image`, the demo, captioning and re-ranking) opens it from the
  shard. Member names are checked (no absolute names, no ``..``, no hidden parts), members are
  read into memory up to :data:`MAX_MEMBER_BYTES`, and decoding keeps the usual pixel limit.

Parquet images are taken from the first column among :data:`PARQUET_IMAGE_COLUMNS` holding bytes
(or a struct with a ``bytes`` field, as Hugging Face datasets write images).

Example:
    >>> items, problems = list_shard(Path("shards"), Path("shards/part-00000.tar"))
    >>> items[0].id
    'part-00000.tar/000000.jpg'
"""

from __future__ import annotations

import functools
import os
import tarfile
from pathlib import Path, PurePosixPath

from cir.errors import DataError
from cir.images import IMAGE_EXTENSIONS

SHARD_SUFFIXES = (".tar", ".parquet")
MAX_MEMBER_BYTES = 256 * 2**20
"""Largest image member read from a shard (bigger ones are skipped and reported)."""
PARQUET_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "bytes")
_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def is_shard(path: Path) -> bool:
    return path.suffix.lower() in SHARD_SUFFIXES


def list_shard(root: Path, shard: Path):
    """The image members of ``shard`` as build items, and what was left out (and why).

    Returns:
        ``(items, problems)``: :class:`cir.index.scan.Item` per image member (``member`` set),
        and ``{"path", "reason"}`` records for unusable members or an unreadable shard.
    """
    from cir.index.scan import Item

    try:
        st = shard.stat()
        table = _table(shard, st)
    except (OSError, DataError) as exc:
        return [], [{"path": str(shard), "reason": _reason(exc, shard)}]
    prefix = shard.relative_to(root).as_posix()
    items, problems = [], []
    for name, (problem, *_) in table.items():
        if problem:
            problems.append({"path": f"{shard}/{name}", "reason": problem})
            continue
        items.append(Item(f"{prefix}/{name}", str(shard), st.st_size, st.st_mtime_ns, name))
    return items, problems


def read_member_path(path: Path) -> bytes | None:
    """The bytes of a member path (``<shard>/<member>``), or None when ``path`` is not one.

    Raises:
        DataError: the shard is unreadable, or the member is missing or too large.
    """
    found = split_member_path(path)
    if found is None:
        return None
    shard, name = found
    st = shard.stat()
    entry = _table(shard, st).get(name)
    if entry is None or entry[0]:
        raise DataError(f"{path}: no such image in the shard {shard.name}")
    return _read(shard, st, name, entry)


def split_member_path(path: Path) -> tuple[Path, str] | None:
    """``(shard file, member name)`` when a parent of ``path`` is a shard file, else None."""
    for parent in Path(path).parents:
        if is_shard(parent) and parent.is_file():
            return parent, Path(path).relative_to(parent).as_posix()
    return None


def shard_stat(path: Path) -> os.stat_result | None:
    """The status of the shard holding member path ``path`` (None: not a member path); a
    member changes only with its shard, so this versions the member."""
    found = split_member_path(path)
    return found[0].stat() if found else None


def _reason(exc: Exception, shard: Path) -> str:
    text = str(exc).removeprefix(f"{shard}: ")
    return text if isinstance(exc, DataError) else f"shard cannot be read ({text})"


def _name_problem(name: str) -> str | None:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts or not parts:
        return "member name not allowed (absolute, '..' or backslash)"
    if any(p.startswith(".") for p in parts):
        return "hidden member left out"
    return None


# --------------------------------------------------------------------- member tables
def _table(shard: Path, st: os.stat_result) -> dict[str, tuple]:
    """``name -> (problem or None, where)`` of the shard's image members, cached per version."""
    build = _tar_table if shard.suffix.lower() == ".tar" else _parquet_table
    return build(shard, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _tar_table(shard: Path, size: int, mtime_ns: int) -> dict[str, tuple]:
    """``name -> (problem, data offset, data size)`` of the image members of a tar shard.

    A shard damaged part-way keeps the complete members before the damage; the rest is one
    reported entry.
    """
    table: dict[str, tuple] = {}
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for info in tar:
                if Path(info.name).suffix.lower() in IMAGE_EXTENSIONS:
                    _add_member(table, info, size)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if not table:
            raise DataError(f"{shard}: not a readable tar shard ({exc})") from None
        table["(rest of the shard)"] = (f"tar shard damaged after this point ({exc})", 0, 0)
    return table


def _add_member(table: dict[str, tuple], info: tarfile.TarInfo, shard_size: int) -> None:
    name = info.name
    problem = _name_problem(name)
    if problem is None and (not info.isfile() or info.issparse()):
        problem = "link, device or sparse member (only plain members are read)"
    elif problem is None and name in table:
        problem, name = "duplicate member name (the first one is indexed)", f"{name}#{info.offset}"
    elif problem is None and info.size > MAX_MEMBER_BYTES:
        problem = f"member of {info.size} bytes, over {MAX_MEMBER_BYTES}"
    elif problem is None and info.offset_data + info.size > shard_size:
        problem = "truncated member (the shard ends inside it)"
    table[name] = (problem, info.offset_data, info.size)


@functools.lru_cache(maxsize=16)
def _parquet_table(shard: Path, size: int, mtime_ns: int) -> dict[str, tuple]:
    """``name -> (problem, row group, row)`` of the images of a parquet shard."""
    pq = _pyarrow_parquet()
    try:
        file = pq.ParquetFile(shard)
        column = _image_column(file.schema_arrow, shard)
        has_key = "key" in file.schema_arrow.names
        table: dict[str, tuple] = {}
        row = 0
        for group in range(file.num_row_groups):
            names = [column] + (["key"] if has_key else [])
            part = file.read_row_group(group, columns=names)
            keys = part.column("key").to_pylist() if has_key else None
            heads, lengths = _heads_and_lengths(part.column(column))
            for n, (head, length) in enumerate(zip(heads, lengths, strict=True)):
                key = str(keys[n]) if keys and keys[n] is not None else f"row-{row:08d}"
                name = key + _extension(head)
                problem = _name_problem(name) or _data_problem(length)
                if problem is None and name in table:
                    problem = "duplicate key (the first one is indexed)"
                    name = f"{name}#{row}"
                table[name] = (problem, group, n)
                row += 1
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises many types on damaged files
        raise DataError(f"{shard}: not a readable parquet shard ({exc})") from None
    return table


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("parquet shards need pyarrow: pip install 'cir[shards]'") from None
    return pq


def _image_column(schema, shard: Path) -> str:
    import pyarrow as pa

    for name in PARQUET_IMAGE_COLUMNS:
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return name
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return name
    raise DataError(
        f"{shard}: no image column (looked for {', '.join(PARQUET_IMAGE_COLUMNS)} holding "
        "bytes, or a struct with a 'bytes' field)"
    )


def _heads_and_lengths(images) -> tuple[list, list]:
    """The first bytes and the length of every image cell, without reading whole images."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_struct(images.type):
        images = pc.struct_field(images, "bytes")
    return pc.binary_slice(images, 0, 12).to_pylist(), pc.binary_length(images).to_pylist()


def _bytes_of(value) -> bytes | None:
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, bytes) else None


def _extension(data: bytes | None) -> str:
    head = data[:12] if data else b""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _MAGIC if head.startswith(magic)), ".img")


def _data_problem(length: int | None) -> str | None:
    if not length:
        return "empty image cell"
    if length > MAX_MEMBER_BYTES:
        return f"image of {length} bytes, over {MAX_MEMBER_BYTES}"
    return None


# --------------------------------------------------------------------- reading
def _read(shard: Path, st: os.stat_result, name: str, entry: tuple) -> bytes:
    if shard.suffix.lower() == ".tar":
        _, offset, length = entry
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise DataError(f"{shard}/{name}: truncated member ({len(data)} of {length} bytes)")
        return data
    _, group, row = entry
    column = _row_group_images(shard, st.st_size, st.st_mtime_ns, group)
    return _bytes_of(column[row]) or b""


@functools.lru_cache(maxsize=2)
def _row_group_images(shard: Path, size: int, mtime_ns: int, group: int) -> list:
    pq = _pyarrow_parquet()
    file = pq.ParquetFile(shard)
    column = _image_column(file.schema_arrow, shard)
    return file.read_row_group(group, columns=[column]).column(column).to_pylist()
