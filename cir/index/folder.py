"""Who owns an index folder, and who may write into it now.

An index folder is recognisably cir's: the first write puts a marker, ``cir-index.json``, into it.
The marker also lists every data file cir has written there (the ledger), *before* the file is
written, so cleaning up old generations or a crashed save deletes only files cir made. A folder
that is not empty and has no marker (nor the manifest of an index saved before markers existed)
is someone else's: cir refuses to write into it.

Writers take an exclusive lock (``.cir-lock``, a POSIX record lock: released when the process
dies, and not inherited by the decoding worker processes a build forks): two builds into the
same folder cannot both run; the second is refused with a clear message.

Example:
    >>> with FolderLock("my_index", wait=0):
    ...     claim("my_index")
    ...     record("my_index", ["ids.1a2b3c4d.json"])
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from cir.errors import DataError

MARKER = "cir-index.json"
LOCK = ".cir-lock"
MANIFEST = "manifest.json"
SKIPPED = "skipped.json"
BUILD_DIR = "build"
FIXED = frozenset({MARKER, LOCK, MANIFEST, SKIPPED, BUILD_DIR})
"""Names cir uses in every index folder it owns."""
MARKER_FORMAT = "cir-index-folder"
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")


# ---------------------------------------------------------------------- ownership
def claim(folder: str | Path) -> None:
    """Make ``folder`` cir's: create it with a marker, adopt an index saved before markers,
    or check that its marker is there.

    Raises:
        DataError: ``folder`` is a file, cannot be created, or holds someone else's files.
    """
    folder = Path(folder)
    if (folder / MARKER).is_file():
        read_ledger(folder)  # a damaged marker is an error, not an invitation
        return
    check_writable(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the index folder {folder}: {exc.strerror}") from None
    _write_marker(folder, sorted(_legacy_files(folder) or []))


def check_writable(folder: str | Path) -> None:
    """Refuse ``folder`` before anything is written when it is not cir's to write into."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"the index folder {folder} is a file; give a folder (new or empty)")
    if not folder.is_dir() or (folder / MARKER).is_file() or _legacy_files(folder) is not None:
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name != LOCK)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise DataError(
            f"refusing to write an index into {folder}: it is not empty ({shown}) and was not "
            f"made by cir (no {MARKER}); give a new or empty folder, so that nothing of yours "
            "is overwritten or deleted"
        )


def _legacy_files(folder: Path) -> list[str] | None:
    """The data files of an index saved before markers existed, or None when there is none."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != "cir-gallery-index":
        return None
    files = manifest.get("files")
    names = list(files.values()) if isinstance(files, dict) else []
    return [n for n in names if isinstance(n, str) and _plain_name(n)]


def read_ledger(folder: str | Path) -> set[str]:
    """The data files cir has written into ``folder`` (from its marker)."""
    path = Path(folder) / MARKER
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is damaged ({exc}); it marks an index folder of cir") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if doc.get("format") != MARKER_FORMAT or not isinstance(files, list):
        raise DataError(f"{path} is not a cir index-folder marker; is this a cir index folder?")
    return {f for f in files if isinstance(f, str) and _plain_name(f)}


def record(folder: str | Path, names: Iterable[str]) -> None:
    """Add ``names`` to the ledger before they are written (the caller holds the lock)."""
    folder = Path(folder)
    _write_marker(folder, sorted(read_ledger(folder) | set(names)))


def remove_owned(folder: str | Path, keep: Iterable[str]) -> None:
    """Delete the ledger's files not in ``keep``, and cir's leftover temporary files."""
    folder, keep = Path(folder), set(keep)
    owned = read_ledger(folder)
    for name in sorted(owned - keep):
        with contextlib.suppress(OSError):  # still open elsewhere (Windows): next save
            (folder / name).unlink(missing_ok=True)
    remove_stale_temporaries(folder, owned | FIXED)
    _write_marker(folder, sorted(n for n in owned if n in keep or (folder / n).exists()))


def remove_stale_temporaries(folder: Path, owned: set[str]) -> None:
    """Remove ``.<name>.tmp-<pid>`` files left by a crashed write of a file cir owns."""
    for path in folder.iterdir():
        match = _TMP.match(path.name)
        if match and match["name"] in owned and not _pid_alive(path.name.rsplit("-", 1)[1]):
            with contextlib.suppress(OSError):
                path.unlink()


def _pid_alive(pid: str) -> bool:
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _write_marker(folder: Path, files: list[str]) -> None:
    from cir.index.store import write_atomic

    doc: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "version": 1,
        "about": "this folder is a cir gallery index; cir deletes only the files listed here",
        "files": files,
    }
    write_atomic(folder / MARKER, json.dumps(doc, indent=1).encode())


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


# ---------------------------------------------------------------------- locking
class FolderLock:
    """An exclusive, re-entrant (per thread) lock on an index folder, held across processes.

    Args:
        folder: the index folder (created if missing, after the ownership check).
        wait: seconds to wait for another writer (0: refuse at once).
        what: what the lock protects, for the error message.

    Raises:
        DataError: another process (or thread) holds the lock after ``wait`` seconds.
    """

    _held: ClassVar[dict[str, tuple[int, int, Any]]] = {}  # path -> (thread, depth, file)
    _guard = threading.Lock()

    def __init__(self, folder: str | Path, wait: float = 0.0, what: str = "write") -> None:
        self.folder, self.wait, self.what = Path(folder), wait, what
        self.key = ""

    def __enter__(self) -> FolderLock:
        check_writable(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the index folder {self.folder}: {exc}") from None
        self.key = str(self.folder.resolve())
        with self._guard:
            held = self._held.get(self.key)
            if held and held[0] == threading.get_ident():
                self._held[self.key] = (held[0], held[1] + 1, held[2])
                return self
        handle = self._acquire()
        with self._guard:
            self._held[self.key] = (threading.get_ident(), 1, handle)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._guard:
            ident, depth, handle = self._held[self.key]
            if depth > 1:
                self._held[self.key] = (ident, depth - 1, handle)
                return
            del self._held[self.key]
        _unlock(handle)
        handle.close()

    def _acquire(self):
        deadline = time.monotonic() + self.wait
        while True:
            with self._guard:
                taken_here = self.key in self._held
            if not taken_here:  # never open a second handle: closing it would drop the lock
                handle = open(self.folder / LOCK, "a+")  # noqa: SIM115 (kept open while held)
                if _try_lock(handle):
                    return handle
                handle.close()
            if time.monotonic() >= deadline:
                raise DataError(
                    f"another cir process is writing the index in {self.folder} (it holds "
                    f"{self.folder / LOCK}); wait until it has finished, or {self.what} "
                    "into another folder"
                )
            time.sleep(0.05)


def _try_lock(handle) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(handle) -> None:
    with contextlib.suppress(OSError):
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.lockf(handle.fileno(), fcntl.LOCK_UN)
