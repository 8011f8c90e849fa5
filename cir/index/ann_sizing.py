"""How big an IVF-PQ index may be: nlist, m and nbits picked from a memory budget.

The rule (in the spirit of autofaiss, which picks the same three numbers from a budget):

- ``nlist``: the power of two at or below ``4 * sqrt(N)``, with at least 39 training rows per
  list (faiss's k-means warns below that), at least 1;
- ``nbits``: 8 bits per sub-quantizer code, fewer only when the gallery has too few rows to
  train 256 centroids per sub-space;
- ``m``: the largest number of sub-quantizers that divides the dimension, keeps sub-vectors of at
  least :data:`MIN_SUBDIM` values, and fits the budget together with the rest of the index;
- an HNSW coarse quantizer (:data:`HNSW_LINKS` links) from :data:`HNSW_FROM` lists on (galleries
  of about 67M rows and more): assigning every row to its list by a flat search over the
  centroids would then dominate the build (N x nlist x D products), and a query's coarse search
  would rival its list scan. Below that a flat search over the centroids is exact and cheap
  (4,096 centroids of 768 values: about 1 ms per query). An HNSW graph over the centroids of
  clustered data whose clusters point in near-orthogonal directions (CLIP galleries) is a poor
  guide: on the 2M x 768 benchmark gallery it found a row's nearest of 4,096 centroids for 20%
  of rows at ``efSearch`` 16 and 62% at 512, and put 87% of the rows into 32 lists.

The estimate counts each row's code and its 8-byte id in the inverted lists, the coarse centroids
(and their HNSW graph), the PQ codebooks and, with OPQ, the rotation matrix.

Example:
    >>> size_ivfpq(2_000_000, 768, parse_memory("384MB")).factory
    'IVF4096,PQ128'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cir.errors import ConfigError

MIN_SUBDIM = 4
HNSW_FROM = 1 << 15
HNSW_LINKS = 32
TRAIN_PER_LIST = 39
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_memory(text: str | int) -> int:
    """Bytes from ``"8GB"``, ``"512MiB"``, ``"1.5 GB"`` or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not match or match.group(2).upper() not in _UNITS:
            raise ConfigError(
                f"memory {text!r} is not a size; write a number with a unit, e.g. 8GB, 512MB, 2GiB"
            )
        value, unit = float(match.group(1)), match.group(2).upper()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"the memory size must be positive, got {text!r}")
    return size


@dataclass(frozen=True)
class IvfPqSizing:
    """The shape of an IVF-PQ index and its estimated memory.

    Attributes:
        rows: gallery rows N.
        dim: dimension D.
        nlist: inverted lists (coarse centroids).
        m: PQ sub-quantizers (bytes per code with 8 bits).
        nbits: bits per sub-quantizer code.
        opq: rotate with OPQ before quantizing.
        hnsw: search the coarse centroids with an HNSW graph.
    """

    rows: int
    dim: int
    nlist: int
    m: int
    nbits: int
    opq: bool = False
    hnsw: bool = False

    @property
    def code_bytes(self) -> int:
        return math.ceil(self.m * self.nbits / 8)

    @property
    def memory(self) -> int:
        """Estimated bytes of the whole index."""
        lists = self.rows * (self.code_bytes + 8)
        coarse = self.nlist * self.dim * 4
        if self.hnsw:
            coarse += self.nlist * HNSW_LINKS * 2 * 4
        codebooks = (1 << self.nbits) * self.dim * 4
        rotation = self.dim * self.dim * 4 if self.opq else 0
        return lists + coarse + codebooks + rotation

    @property
    def factory(self) -> str:
        """The faiss ``index_factory`` string."""
        coarse = f"IVF{self.nlist}_HNSW{HNSW_LINKS}" if self.hnsw else f"IVF{self.nlist}"
        pq = f"PQ{self.m}x{self.nbits}" if self.nbits != 8 else f"PQ{self.m}"
        prefix = f"OPQ{self.m}," if self.opq else ""
        return f"{prefix}{coarse},{pq}"

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "dim": self.dim,
            "nlist": self.nlist,
            "m": self.m,
            "nbits": self.nbits,
            "opq": self.opq,
            "hnsw": self.hnsw,
            "factory": self.factory,
            "memory_bytes": self.memory,
        }


def size_ivfpq(rows: int, dim: int, max_memory: int, opq: bool = False) -> IvfPqSizing:
    """The most accurate IVF-PQ shape whose estimated memory stays within ``max_memory`` bytes.

    Raises:
        ConfigError: an empty gallery, or a budget too small for the smallest shape.
    """
    if rows < 1 or dim < 1:
        raise ConfigError(f"cannot size an approximate index over {rows} rows of dimension {dim}")
    nlist = _nlist(rows)
    nbits = max(1, min(8, int(math.log2(max(2, rows // TRAIN_PER_LIST)))))
    hnsw = nlist >= HNSW_FROM
    choices = [m for m in range(dim // MIN_SUBDIM, 0, -1) if dim % m == 0] or [1]
    for m in choices:
        shape = IvfPqSizing(rows, dim, nlist, m, nbits, opq, hnsw)
        if shape.memory <= max_memory:
            return shape
    smallest = IvfPqSizing(rows, dim, nlist, choices[-1], nbits, opq, hnsw)
    raise ConfigError(
        f"an IVF-PQ index of {rows} rows x {dim} needs at least {smallest.memory / 1e6:.1f} MB "
        f"({smallest.factory}); the budget is {max_memory / 1e6:.1f} MB: raise --max-index-memory"
    )


def _nlist(rows: int) -> int:
    target = max(1, min(4 * math.sqrt(rows), rows / TRAIN_PER_LIST))
    return 1 << math.floor(math.log2(target))
