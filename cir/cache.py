"""A content-addressed cache of captions, LLM outputs and text embeddings.

Every entry is stored under the sha256 of the *parts* that determine it: the stage, the model's
identity (id + revision + backend), the prompt's hash, the sampling settings and a fingerprint of
the input (image bytes hash, text). Change any part and the key changes; re-run the same thing
and the answer comes back without asking the model.

Storage is one SQLite database in WAL mode (``<dir>/cache.sqlite3``). SQLite gives what a cache
shared by several processes needs without extra code: every write is a transaction, so an
interrupted run leaves either the whole entry or nothing; readers never block the writer and one
writer at a time is enforced by the database lock (with a busy timeout, so concurrent writers wait
instead of failing); and the whole cache is one file that is easy to inspect, copy or delete.

Values are JSON (captions, raw LLM texts), tensors (embeddings, stored as safetensors bytes) or
images (generated pictures, stored as PNG bytes): no pickle, so importing someone else's cache
file runs no code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from PIL import Image

from cir import cache_import
from cir.errors import DataError

FILE_NAME = "cache.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    stage TEXT NOT NULL,
    model TEXT NOT NULL,
    encoding TEXT NOT NULL,
    value BLOB NOT NULL,
    parts TEXT NOT NULL,
    created REAL NOT NULL,
    source TEXT
)
"""
_COLUMNS = "key, kind, stage, model, encoding, value, parts, created, source"
_MARKS = ",".join("?" * 9)
#: Bumped when the table changes; a cache written by a newer schema is refused, not guessed at.
SCHEMA_VERSION = 2


def default_cache_dir() -> Path:
    """``$CIR_CACHE_DIR``, else ``$XDG_CACHE_HOME/cir``, else ``~/.cache/cir``."""
    if os.environ.get("CIR_CACHE_DIR"):
        return Path(os.environ["CIR_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cir"


def make_key(parts: Mapping[str, Any]) -> str:
    """The sha256 of the canonical JSON of ``parts`` (key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def model_revision(name: str) -> str | None:
    """For a model stored in a local folder or file, a hash of its files' names, sizes and times.

    Put it in cache keys next to the model name, so replacing the weights at the same path
    invalidates cached outputs. Hub names (nothing at that path) give None.
    """
    text = name.split(":", 1)[1] if name.startswith(("local-dir:", "hf:")) else name
    if not text.strip():
        return None
    path = Path(text).expanduser()
    try:
        if not path.exists():
            return None
        files = [path] if path.is_file() else sorted(islice(path.rglob("*"), 2000))
        digest = hashlib.sha256()
        for file in files:
            stat = file.stat()
            digest.update(
                f"{file.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns};".encode()
            )
    except (OSError, ValueError):
        return None
    return digest.hexdigest()[:16]


_IMAGE_HASHES: dict[tuple[str, int, int], str] = {}


def fingerprint_image(image: str | Path | Image.Image) -> str:
    """A sha256 identifying an image: of the file's bytes for a path, of the pixels for a PIL image.

    File hashes are remembered per (path, size, modification time), so a gallery is read once;
    an image inside a webdataset or parquet shard is versioned by its shard's.

    Example:
        >>> fingerprint_image("photos/dress.jpg")[:12]
        '3f0c9a1b77de'
    """
    if isinstance(image, Image.Image):
        digest = hashlib.sha256(f"{image.mode}:{image.size}:".encode())
        digest.update(image.tobytes())
        return digest.hexdigest()
    path = Path(image)
    try:
        stat, read = path.stat(), path.read_bytes
    except OSError as exc:
        from cir.index.shards import read_member_path, shard_stat

        stat, read = shard_stat(path), lambda: read_member_path(path)  # an image in a shard
        if stat is None:
            raise DataError(f"cannot read image {str(path)!r}: {exc.strerror}") from None
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _IMAGE_HASHES:
        _IMAGE_HASHES[memo] = hashlib.sha256(read()).hexdigest()
    return _IMAGE_HASHES[memo]


@dataclass
class CacheStats:
    """Lookups answered from the cache (hits), not found (misses), and entries written."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    imported: dict[str, int] = field(default_factory=dict)
    """Hits answered by imported entries, by ``import:<sha256 of the file>``."""

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "imported": dict(self.imported),
            "hit_rate": round(self.hit_rate, 4),
        }


@dataclass(frozen=True)
class CacheEntry:
    """One value to store, with what it is and the parts its key is the hash of."""

    parts: Mapping[str, Any]
    value: Any
    kind: str = "llm"

    @property
    def key(self) -> str:
        return make_key(self.parts)


def _prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the table, bring an older cache up to date, refuse one from a newer cir."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise DataError(
            f"the cache {str(path)!r} was written by a newer cir (schema {version}; this version "
            f"reads up to {SCHEMA_VERSION}): upgrade cir, or set CIR_CACHE_DIR to another folder"
        )
    conn.execute(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    if "source" not in columns:  # a cache made before imports were marked
        conn.execute("ALTER TABLE entries ADD COLUMN source TEXT")
    if version < SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class ContentCache:
    """A content-addressed store shared by stages, benchmarks and processes.

    Args:
        location: a folder (the database is ``<folder>/cache.sqlite3``) or a ``.sqlite3`` file;
            default :func:`default_cache_dir`.

    Keys are built from parts with :func:`make_key`; ``parts`` should name at least ``stage``,
    ``model`` and the inputs (``ContentCache.entry`` helps). ``stats`` counts hits and misses.

    Example:
        >>> cache = ContentCache("/tmp/cir-cache")
        >>> parts = {"stage": "caption", "model": "blip", "image": fingerprint_image("a.jpg")}
        >>> key = cache.put(CacheEntry(parts, ["a red dress"], kind="caption"))
        >>> cache.get(key)
        ['a red dress']
        >>> cache.stats.hits
        1
    """

    def __init__(self, location: str | Path | None = None) -> None:
        location = Path(location).expanduser() if location else default_cache_dir()
        self.path = (
            location if location.suffix in (".sqlite3", ".sqlite", ".db") else location / FILE_NAME
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"cannot create the cache folder {str(self.path.parent)!r}: {exc}"
            ) from None
        self.stats = CacheStats()
        self._local = threading.local()
        self._lock = threading.Lock()
        with _database(self.path), self._connection() as conn:
            _prepare_schema(conn, self.path)

    def __repr__(self) -> str:
        return f"ContentCache({str(self.path)!r})"

    # ------------------------------------------------------------------ connection
    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=60.0)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError as exc:
                raise DataError(f"cannot open the cache {str(self.path)!r}: {exc}") from None
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ read
    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` (counted as a hit or a miss)."""
        found = self.get_many([key])
        return found.get(key, default)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values found for ``keys`` (missing keys are absent from the result)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        sources: list[str] = []
        with _database(self.path):
            conn = self._connection()
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, encoding, value, source FROM entries WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
                for key, encoding, blob, source in rows:
                    found[key] = _decode(encoding, blob)
                    if source:
                        sources.append(source)
        with self._lock:
            self.stats.hits += len(found)
            self.stats.misses += len(keys) - len(found)
            for source in sources:
                self.stats.imported[source] = self.stats.imported.get(source, 0) + 1
        return found

    def __contains__(self, key: str) -> bool:
        with _database(self.path):
            found = self._connection().execute("SELECT 1 FROM entries WHERE key = ?", (key,))
            return found.fetchone() is not None

    def __len__(self) -> int:
        with _database(self.path):
            return self._connection().execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    # ------------------------------------------------------------------ write
    def put(self, entry: CacheEntry) -> str:
        """Store one entry; returns its key."""
        return self.put_many([entry])[0]

    def put_many(self, entries: Iterable[CacheEntry], source: str | None = None) -> list[str]:
        """Store entries in one transaction (all or nothing); returns their keys.

        ``source`` marks where they came from (``replay:<sha256>``); runs count hits per mark.
        """
        rows = [_row(e, source) for e in entries]
        with _database(self.path), self._connection() as conn:
            conn.executemany(f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES ({_MARKS})", rows)
        with self._lock:
            self.stats.writes += len(rows)
        return [row[0] for row in rows]

    def clear(self, stage: str | None = None, kind: str | None = None) -> int:
        """Delete entries (of one stage and/or kind when given); returns how many."""
        where, args = _filter(stage, kind)
        with _database(self.path), self._connection() as conn:
            removed = conn.execute(f"DELETE FROM entries{where}", args).rowcount
        if stage is None and kind is None:
            with _database(self.path):
                self._connection().execute("VACUUM")
        return removed

    # ------------------------------------------------------------------ inspect
    def info(self) -> dict[str, Any]:
        """Location, entry counts per (kind, stage, model), bytes stored, this session's stats."""
        with _database(self.path):
            groups = self._groups()
        files = [self.path, Path(f"{self.path}-wal")]
        return {
            "path": str(self.path),
            "entries": sum(g[3] for g in groups),
            "value_bytes": int(sum(g[4] or 0 for g in groups)),
            "file_bytes": sum(f.stat().st_size for f in files if f.exists()),
            "groups": [
                {"kind": k, "stage": s, "model": m, "entries": n, "value_bytes": int(b or 0)}
                for k, s, m, n, b in groups
            ],
            "stats": self.stats.to_dict(),
        }

    def _groups(self) -> list[tuple]:
        return (
            self._connection()
            .execute(
                "SELECT kind, stage, model, COUNT(*), SUM(LENGTH(value)) FROM entries "
                "GROUP BY kind, stage, model ORDER BY kind, stage, model"
            )
            .fetchall()
        )

    def entries(self, stage: str | None = None, kind: str | None = None) -> Iterator[dict]:
        """Every stored entry as a dict (key, kind, stage, model, parts, value, created)."""
        for row in self._rows(stage, kind):
            yield {**row, "value": _decode(row.pop("encoding"), row.pop("blob"))}

    def _rows(self, stage: str | None, kind: str | None) -> Iterator[dict[str, Any]]:
        where, args = _filter(stage, kind)
        columns = ("key", "kind", "stage", "model", "encoding", "value", "parts", "created")
        query = f"SELECT {', '.join(columns)} FROM entries{where} ORDER BY created, key"
        with _database(self.path):
            cursor = self._connection().execute(query, args)
        while True:
            with _database(self.path):
                rows = cursor.fetchmany(500)
            if not rows:
                return
            for row in rows:
                entry = dict(zip(columns, row, strict=True))
                entry["blob"] = bytes(entry.pop("value"))
                entry["parts"] = json.loads(entry["parts"])
                yield entry

    # ------------------------------------------------------------------ share
    def export(self, path: str | Path, stage: str | None = None, kind: str | None = None) -> int:
        """Write entries to a self-describing JSON-lines file (gzip when it ends in ``.gz``).

        The first line is a header (format, version, entry count); every other line is one entry
        with its key, the parts the key hashes, and the value (JSON, or base64 safetensors for
        tensors). The file appears only when complete. Returns the number of entries written.
        """
        from cir.cache_import import write_export

        where, args = _filter(stage, kind)
        count = self._connection().execute(f"SELECT COUNT(*) FROM entries{where}", args)
        return write_export(Path(path), count.fetchone()[0], self._rows(stage, kind), stage, kind)

    def import_file(
        self, path: str | Path, overwrite: bool = False, verify: int = 0
    ) -> cache_import.ImportReport:
        """Add the entries of an exported file, as hostile input (see :mod:`cir.cache_import`).

        Every line is checked (key against parts, kind, value shape, sizes) while the file is
        streamed into one transaction: a damaged file is refused with nothing written. Entries
        are marked with the file's sha256, so runs report the outputs that came from it.
        Existing keys are kept unless ``overwrite``. With ``verify`` > 0, that many text
        embeddings are recomputed first (where their encoder loads) and a mismatch refuses
        the file.

        Returns:
            An :class:`ImportReport`; ``int(report)`` is the number of entries added.
        """
        from cir._paths import file_sha256
        from cir.cache_import import ImportReport, read_export, verify_sample

        path = Path(path)
        if verify:
            checked, wrong = verify_sample(list(read_export(path)), verify)
            if wrong:
                raise DataError(
                    f"{path}: {len(wrong)} of {checked} recomputed embeddings do not match their "
                    f"text (e.g. key {wrong[0]}); the file was refused"
                )
        else:
            checked = 0
        source = f"import:{file_sha256(path) if path.is_file() else ''}"
        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        with _database(self.path), self._connection() as conn:
            before = conn.total_changes
            batch = []
            for e in read_export(path):
                batch.append(_import_row(e, source))
                if len(batch) >= 500:
                    conn.executemany(f"{verb} INTO entries ({_COLUMNS}) VALUES ({_MARKS})", batch)
                    batch = []
            conn.executemany(f"{verb} INTO entries ({_COLUMNS}) VALUES ({_MARKS})", batch)
            added = conn.total_changes - before
        return ImportReport(added, source, checked)


def _import_row(e: dict[str, Any], source: str) -> tuple:
    parts = json.dumps(e["parts"], sort_keys=True)
    return (e["key"], e["kind"], e["stage"], e["model"], e["encoding"], e["blob"], parts,
            e["created"], source)  # fmt: skip


@contextlib.contextmanager
def _database(path: Path) -> Iterator[None]:
    """Turn a damaged database file into a DataError that says what to do."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise
        raise DataError(
            f"the cache {str(path)!r} is damaged ({exc}); delete it (it only holds recomputable "
            "results) or run with --no-cache"
        ) from None


# ---------------------------------------------------------------------- encoding helpers
def _row(entry: CacheEntry, source: str | None = None) -> tuple:
    encoding, blob = _encode(entry.value)
    parts = dict(entry.parts)
    return (
        make_key(parts),
        entry.kind,
        str(parts.get("stage", "")),
        str(parts.get("model", "")),
        encoding,
        blob,
        json.dumps(parts, sort_keys=True, ensure_ascii=False),
        time.time(),
        source,
    )


_BINARY = ("safetensors", "png")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _encode(value: Any) -> tuple[str, bytes]:
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        from safetensors.torch import save as save_tensors

        return "safetensors", save_tensors({"value": value.detach().cpu().contiguous()})
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return "png", buffer.getvalue()
    try:
        return "json", json.dumps(value, ensure_ascii=False).encode("utf-8")
    except TypeError as exc:
        raise TypeError(f"the cache stores JSON values or tensors: {exc}") from None


def _decode(encoding: str, blob: bytes) -> Any:
    if encoding == "safetensors":
        from safetensors.torch import load as load_tensors

        return load_tensors(bytes(blob))["value"]
    if encoding == "png":
        return _png_image(bytes(blob))
    return json.loads(bytes(blob).decode("utf-8"))


def _png_image(blob: bytes) -> Image.Image:
    """A stored PNG, decoded as RGB (refused unless it is a PNG of a sane size)."""
    from cir.images import load_image

    if not blob.startswith(_PNG_SIGNATURE):
        raise DataError("a cached image is not a PNG; the cache entry is damaged")
    with Image.open(io.BytesIO(blob), formats=["PNG"]) as opened:
        return load_image(opened)


def _filter(stage: str | None, kind: str | None) -> tuple[str, list[str]]:
    clauses, args = [], []
    for column, value in (("stage", stage), ("kind", kind)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
