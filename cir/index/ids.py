"""A compact table of gallery ids: about 24 bytes per id plus its UTF-8 text.

A Python list plus a dict of a million short ids costs about 200 bytes per id, as much as a
128-d fp16 embedding. Here the ids are one UTF-8 buffer with offsets, and lookups go through a
sorted array of the ids' hashes (collisions are resolved by comparing the text).

Any Python string round-trips, including file names that are not valid UTF-8 (Python gives
their undecodable bytes as lone surrogates): the buffer keeps surrogates as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np

_ERRORS = "surrogatepass"


class IdTable:
    """Ids by position and positions by id.

    Example:
        >>> table = IdTable(["a.jpg", "b.jpg"])
        >>> table[1], table.find("a.jpg"), table.find("zzz")
        ('b.jpg', 0, -1)
    """

    def __init__(self, ids: Sequence[str]) -> None:
        encoded = [i.encode("utf-8", _ERRORS) for i in ids]
        self._blob = b"".join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        hashes = np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(encoded))
        self._order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[self._order]

    def __reduce__(self) -> tuple:
        # Python's string hashes are salted per process: another process (a Ray worker, a
        # DataLoader worker under spawn) must hash the ids again, so only the ids travel.
        return IdTable, (self.tolist(),)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, position: int) -> str:
        start, stop = self._offsets[position], self._offsets[position + 1]
        return self._blob[start:stop].decode("utf-8", _ERRORS)

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and self.find(id) >= 0

    def find(self, id: str) -> int:
        """The position of ``id``, or -1."""
        h = hash(id)
        lo = int(np.searchsorted(self._hashes, h, side="left"))
        while lo < len(self._hashes) and self._hashes[lo] == h:
            position = int(self._order[lo])
            if self[position] == id:
                return position
            lo += 1
        return -1

    def lookup(self, ids: Iterable[str]) -> dict[str, int]:
        """Positions of the known ``ids`` (unknown ones are left out)."""
        found = {}
        for i in ids:
            position = self.find(i)
            if position >= 0:
                found[i] = position
        return found

    def tolist(self) -> list[str]:
        text, offsets = self._blob, self._offsets.tolist()
        return [text[a:b].decode("utf-8", _ERRORS) for a, b in itertools.pairwise(offsets)]

    def take(self, positions: Iterable[int]) -> list[str]:
        """The ids at ``positions``."""
        where = np.fromiter(positions, dtype=np.int64)
        starts, stops = self._offsets[where].tolist(), self._offsets[where + 1].tolist()
        text = self._blob
        return [text[a:b].decode("utf-8", _ERRORS) for a, b in zip(starts, stops, strict=True)]

    def nbytes(self) -> int:
        return len(self._blob) + self._offsets.nbytes + self._order.nbytes + self._hashes.nbytes


def printable(text: str) -> str:
    """``text`` safe to print or send as UTF-8: undecodable bytes of a file name become
    ``\\xNN`` escapes (``b"caf\\xe9.jpg"`` shows as ``caf\\xe9.jpg``); other text is unchanged.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")
