"""What the stages that re-order a ranking's head share: applying the order and recording moves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cir.errors import DataError
from cir.rerank.order import apply_order, movements
from cir.types import QueryState, Ranking

MIN_IMAGE_SIDE = 28


def check_head(top_n: int, least: int = 2, **sizes: int) -> None:
    """Refuse a head of fewer than ``least`` candidates, or an image size (named by its
    parameter) under ``MIN_IMAGE_SIDE`` pixels (ValueError, which params validation turns into a
    ConfigError)."""
    if top_n < least:
        raise ValueError(f"top_n must be >= {least} (candidates to re-order), got {top_n}")
    for name, side in sizes.items():
        if side < MIN_IMAGE_SIDE:
            raise ValueError(f"{name} must be >= {MIN_IMAGE_SIDE} pixels, got {side}")


def require_ranking(state: QueryState, stage: str) -> Ranking:
    """The state's ranking, or a DataError saying which stage must come first."""
    if state.ranking is None:
        raise DataError(
            f"stage {stage!r}: query {state.query.id!r} has no ranking; put a `retrieve` stage "
            "before it"
        )
    return state.ranking


def head_size(state: QueryState, top_n: int) -> int:
    """How many candidates of the ranking a stage with ``top_n`` re-orders."""
    return min(top_n, len(state.ranking)) if state.ranking is not None else 0


def reorder(
    state: QueryState, instance: str, order: Sequence[int], count: int, **details: Any
) -> None:
    """Put the first ``count`` candidates in ``order`` (positions, best first) and record it.

    Scores stay with positions, so the ranking stays sorted; ranks after ``count`` do not move.
    ``data[instance]`` gets the new head, each candidate's move (``{"id", "from", "to"}``, which
    the demo shows) and ``details``; the trace notes how many candidates moved.
    """
    before = state.ranking
    state.ranking = apply_order(before, order, count)
    moves = movements(before, state.ranking, count)
    state.data[instance] = {
        "candidates": count,
        "order": list(state.ranking.ids[:count]),
        "moves": moves,
        **details,
    }
    record = state.record(instance)
    record.notes["moved"] = sum(m["from"] != m["to"] for m in moves)
