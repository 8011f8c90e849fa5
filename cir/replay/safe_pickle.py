"""Reading pickles that may only hold plain data: containers, strings and numbers.

A pickle can name any importable callable and have the reader call it, so an untrusted pickle
is a program. :func:`load_plain_pickle` reads with an unpickler that resolves no global at all,
except the constructors of ``set`` and ``frozenset`` (older protocols spell sets that way):
everything else, a torch tensor, a numpy array, ``os.system``, is refused with an error that
names it, before anything is called. (Protocols 0-2 spell ``bytes`` through ``_codecs.encode``,
so bytes only load from protocol 3 on.) Persistent ids (how ``torch.save`` points at storages) are
refused too.

Example:
    >>> load_plain_pickle("precomputed/circo_blip2_t5_test_captions.pkl")
    {'all_captions': [...], 'query_ids': [...], ...}
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from cir.errors import DataError

MAX_BYTES = 256 * 1024 * 1024
# Protocols 0-2 write the builtins module as "__builtin__".
_ALLOWED = {
    (module, kind.__name__): kind
    for module in ("builtins", "__builtin__")
    for kind in (set, frozenset)
}


class UnsafePickleError(DataError):
    """A pickle asked for something other than plain containers, strings and numbers."""


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data))
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self.where}: refused to load the global {module}.{name}; only plain "
                "containers (dict, list, tuple, set), strings, bytes and numbers are read from "
                "pickles. Convert the file to JSON (or to plain lists) where it was made."
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.where}: refused a persistent reference ({str(pid)[:60]}); this looks like a "
            "torch.save file, which cir does not unpickle. Save plain lists or JSON instead."
        )


def load_plain_pickle(path: str | Path, max_bytes: int = MAX_BYTES) -> Any:
    """The plain data in a pickle file; any other object is refused before it is built.

    Raises:
        DataError: the file is missing, larger than ``max_bytes`` or not a pickle.
        UnsafePickleError: the pickle names a global or a persistent id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pickle file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"pickle file {str(path)!r} has {size} bytes; the limit is {max_bytes}")
    try:
        return _PlainUnpickler(path.read_bytes(), str(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise DataError(f"{path}: not a readable pickle ({exc})") from None
