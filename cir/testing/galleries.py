"""Seeded synthetic galleries with CLIP-like structure, for tests and benchmarks of search.

Rows are drawn around a few thousand centres inside a narrow cone, as CLIP embeddings are: a
shared direction carries half of each row's energy (so unrelated rows have cosine about 0.5),
the row's centre about a third, and noise of a per-centre level the rest. Centres get Zipf-like
sizes, as real photo collections do.

Example:
    >>> rows = clustered_rows(10_000, 64, centres=50, seed=0)   # (10000, 64) float16, unit rows
    >>> queries = clustered_queries(rows, 8, seed=1)
"""

from __future__ import annotations

import torch

SHARED = 0.5
"""Share of each row's energy along the common direction: the mean cosine of unrelated rows."""
CENTRE = 0.32


def _layout(dim: int, centres: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shared = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    means = torch.nn.functional.normalize(torch.randn(centres, dim, generator=g), dim=1)
    means -= (means @ shared)[:, None] * shared  # centre directions orthogonal to the shared one
    means = torch.nn.functional.normalize(means, dim=1)
    weights = 1.0 / torch.arange(1, centres + 1, dtype=torch.float64) ** 0.5
    return shared, means, weights


def clustered_rows(
    count: int,
    dim: int,
    centres: int = 4096,
    seed: int = 0,
    start: int = 0,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Rows ``[start, start + count)`` of the seeded gallery, unit length (drawable in chunks).

    The same ``seed``, ``dim`` and ``centres`` always give the same gallery; each row depends
    only on its own position, so a large gallery is made chunk by chunk.
    """
    shared, means, weights = _layout(dim, centres, seed)
    g = torch.Generator().manual_seed(seed * 1_000_003 + start + 1)
    owner = torch.multinomial(weights, count, replacement=True, generator=g)
    return _around(shared, means, owner, g).to(dtype)


def clustered_queries(rows: torch.Tensor, count: int, seed: int = 1, noise: float = 0.3):
    """Queries near ``count`` seeded gallery rows (float32, unit length)."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(rows), (count,), generator=g)
    base = rows[picks].float()
    jitter = torch.nn.functional.normalize(torch.randn(base.shape, generator=g), dim=1)
    return torch.nn.functional.normalize(base + noise * jitter, dim=1)


def _around(shared, means, owner, g) -> torch.Tensor:
    dim = shared.shape[0]
    level = 0.1 + 0.16 * torch.rand(len(means), generator=g)  # per-centre noise energy
    noise = torch.nn.functional.normalize(torch.randn(len(owner), dim, generator=g), dim=1)
    spread = level[owner].sqrt()
    rows = SHARED**0.5 * shared + CENTRE**0.5 * means[owner] + spread[:, None] * noise
    return torch.nn.functional.normalize(rows, dim=1)
