"""Re-ranking a benchmark's candidate set directly: CIRR's subset protocol for re-rankers.

CIRR scores ``Recall_subset@K`` on the query's image set (six images that look alike, the
reference among them). A first-stage ranking gives that subset ranking by restricting itself to
the set; a re-ranker can instead look at the set members themselves, as CoTRR does (the five
members other than the reference, best first, of which the top 3 count). A re-ranking stage
asked to (``rerank`` param ``subset_members``) writes that order to
``state.data[SUBSET_RANKING]``; ``cir bench run`` reads it there in place of the restricted
first-stage ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

from cir.errors import DataError
from cir.rerank.order import full_order
from cir.types import QueryState

SUBSET_RANKING = "subset_ranking"
"""The ``QueryState.data`` entry holding a stage's own ordering of the query's set members."""


def set_members(state: QueryState, key: str, stage: str) -> list[str]:
    """The ids listed in ``state.query.extras[key]`` other than the reference, in the order of
    the query's current ranking (members it lacks follow in their listed order).

    Example:
        >>> set_members(state, "group_members", "rerank")   # CIRR: the 5 other set images
    """
    members = state.query.extras.get(key)
    if not isinstance(members, list | tuple) or not all(isinstance(m, str) for m in members):
        raise DataError(
            f"stage {stage!r}: query {state.query.id!r} has no list of set members in "
            f"extras[{key!r}] (got {members!r}); subset re-ranking needs a benchmark that lists "
            "each query's image set (CIRR: group_members)"
        )
    others = [m for m in dict.fromkeys(members) if m != state.query.reference_id]
    position = {id_: i for i, id_ in enumerate(state.ranking.ids)} if state.ranking else {}
    listed = {id_: i for i, id_ in enumerate(others)}
    return sorted(others, key=lambda m: (position.get(m, len(position)), listed[m]))


def reorder(ids: Sequence[str], order: Sequence[int]) -> list[str]:
    """``ids`` with the 0-based positions of ``order`` first, the others after in their order.

    Example:
        >>> reorder(["a", "b", "c"], [2])
        ['c', 'a', 'b']
    """
    return [ids[i] for i in full_order(order, len(ids))]
