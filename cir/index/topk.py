"""A running top-k over score chunks that avoids a partial sort of every chunk.

``torch.topk`` over a (Q, C) block costs a partial sort per row. Once the first chunk has set a
bar (each query's k-th best score so far), later chunks only need the few entries above it. They
are found in two cheap passes: the maximum of every group of ``GROUP`` consecutive scores, then
the members of the groups whose maximum clears the bar. A chunk with too many entries above the
bar (a gallery sorted by score, say) falls back to ``torch.topk``.
"""

from __future__ import annotations

import torch

GROUP = 64
_NEG_INF = float("-inf")


class RunningTopK:
    """The best ``k`` (score, position) pairs per query over chunks pushed in order.

    Example:
        >>> best = RunningTopK(10)
        >>> for start in range(0, n, step):
        ...     best.push(q @ x[start:start + step].T, start)
        >>> best.values, best.positions          # (Q, 10) each, best first
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def push(self, scores: torch.Tensor, start: int) -> None:
        """Merge the chunk ``scores`` (Q, C) whose columns are rows ``start ...`` of the gallery.

        NaN scores count as -inf (never returned).
        """
        if self.values is None or self.values.shape[1] < self.k:
            self._merge_topk(scores, start)
            return
        bar = self.values[:, -1:].to(scores.dtype)
        found = _entries_above(scores.contiguous(), bar)
        if found is None:
            self._merge_topk(scores, start)
            return
        q, c = found
        if q.numel():
            self._merge_pairs(scores, q, c, start)

    def _merge_topk(self, scores: torch.Tensor, start: int) -> None:
        v, i = torch.topk(scores, min(self.k, scores.shape[1]), dim=1)
        if bool(torch.isnan(v).any()):  # topk ranks NaN first
            v, i = torch.topk(scores.masked_fill(scores.isnan(), _NEG_INF), v.shape[1], dim=1)
        self.merge(v, i + start)

    def _merge_pairs(self, scores: torch.Tensor, q: torch.Tensor, c: torch.Tensor, start: int):
        """Merge (query, column) pairs, sorted by query, into the running top-k."""
        counts = torch.bincount(q, minlength=scores.shape[0])
        most = int(counts.max())
        rank = torch.arange(len(q), device=q.device) - (torch.cumsum(counts, 0) - counts)[q]
        pad_v = scores.new_full((scores.shape[0], most), _NEG_INF)
        pad_i = torch.zeros((scores.shape[0], most), dtype=torch.long, device=q.device)
        pad_v[q, rank] = scores[q, c]
        pad_i[q, rank] = c + start
        self.merge(pad_v, pad_i)

    def merge(self, v: torch.Tensor, i: torch.Tensor) -> None:
        """Merge ready candidates: scores ``v`` (Q, m) at gallery positions ``i`` (Q, m)."""
        if self.values is not None:
            v = torch.cat([self.values, v.to(self.values.dtype)], 1)
            i = torch.cat([self.positions, i], 1)
            v, sel = torch.topk(v, min(self.k, v.shape[1]), dim=1)
            i = i.gather(1, sel)
        self.values, self.positions = v, i


def _entries_above(
    scores: torch.Tensor, bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(query, column) of the entries strictly above each query's bar, sorted by query.

    Returns None when the entries are too many for this to beat a partial sort.
    """
    num_q, cols = scores.shape
    full = cols // GROUP * GROUP
    if full == 0:
        return _nonzero(scores > bar)
    group_max = scores[:, :full].view(num_q, -1, GROUP).amax(dim=2)
    if bool(torch.isnan(group_max).any()):  # a NaN hides its group's other scores
        scores = scores.masked_fill(scores.isnan(), _NEG_INF)
        group_max = scores[:, :full].view(num_q, -1, GROUP).amax(dim=2)
    gq, gi = (group_max > bar).nonzero(as_tuple=True)
    if gq.numel() * GROUP * 4 > num_q * cols:
        return None
    columns = gi[:, None] * GROUP + torch.arange(GROUP, device=scores.device)
    hit = scores[gq[:, None], columns] > bar[gq]
    rows, members = hit.nonzero(as_tuple=True)
    q, c = gq[rows], columns[rows, members]
    if full < cols:
        tq, tc = _nonzero(scores[:, full:] > bar)
        q, c = torch.cat([q, tq]), torch.cat([c, tc + full])
        order = torch.argsort(q, stable=True)
        q, c = q[order], c[order]
    return q, c


def _nonzero(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, c = mask.nonzero(as_tuple=True)
    return q, c
