"""Reading a model's ordering of numbered candidates, and applying it to a ranking.

Models answer in many shapes: ``{"ranking": [3, 1, 2]}`` after a chain of thought, the same inside
a code fence, ``["Image 3", "Image 1"]``, ``3 > 1 > 2``, 0-based labels, repeated labels, labels
that were never shown, or only the few best. :func:`parse_order` turns all of these into 0-based
candidate positions and says what it had to drop; :func:`apply_order` puts the mentioned candidates
first, the unmentioned ones after them in retrieval order, and leaves the tail of the ranking alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cir.types import Ranking

# Keys under which answers put their ordering, most specific first.
ORDER_KEYS = (
    "ranking",
    "final_ranking",
    "order",
    "ranked",
    "ranked_labels",
    "best_to_worst",
    "answer",
    "result",
)
_TOP_K_INDICES = re.compile(r"top_\d+_indices")  # CoTRR's own answer key
ITEM_KEYS = ("label", "number", "candidate", "image", "id", "index")
_INTEGER = re.compile(r"-?\d+")
_BARE_ORDER = re.compile(r"^[\s\[(]*#?\d+(?:(?:\s*[,;>]\s*|\s+)#?\d+)*[\s\])]*\.?$")


@dataclass(frozen=True)
class ParsedOrder:
    """An ordering read from a model answer.

    Attributes:
        order: 0-based candidate positions, best first, each at most once, all in range.
        dropped: labels given but not shown to the model (out of range or unreadable).
        duplicates: how many repeated labels were ignored (the first mention counts).
        zero_based: whether the answer used 0-based labels.
    """

    order: tuple[int, ...]
    dropped: tuple[Any, ...] = ()
    duplicates: int = 0
    zero_based: bool = False

    def complete(self, count: int) -> bool:
        """Whether every one of ``count`` candidates was placed."""
        return len(self.order) == count


def parse_order(text: str | None, count: int) -> ParsedOrder | None:
    """Read an ordering of ``count`` candidates labelled 1..count from a model answer.

    The answer's JSON (whole text, a code fence or a span inside prose; the last one that holds
    an ordering wins, so labels quoted in a chain of thought do not count) or a bare list of
    numbers such as ``3, 1, 2`` or ``3 > 1 > 2``. Labels are 1-based unless the answer uses 0
    and never ``count``. Returns None when nothing usable is found (garbage, an empty answer, an
    empty list, or only labels outside the candidate set).

    Example:
        >>> parse_order('Step 1 ... ```json\\n{"ranking": [3, 1, 3, 9]}\\n```', 4)
        ParsedOrder(order=(2, 0), dropped=(9,), duplicates=1, zero_based=False)
    """
    if not text or count < 1:
        return None
    for labels in _label_lists(text):
        parsed = _resolve(labels, count)
        if parsed is not None:
            return parsed
    return None


def apply_order(ranking: Ranking, order: Sequence[int], count: int) -> Ranking:
    """Re-order the first ``count`` entries of ``ranking``.

    The positions in ``order`` come first (best first), the other top-``count`` entries follow in
    retrieval order, and entries after ``count`` keep their places. Scores stay with positions (the
    i-th score of the result is the i-th score of the input), so the result is still sorted.

    Example:
        >>> apply_order(Ranking(("a", "b", "c", "d"), (4, 3, 2, 1)), [2], 3).ids
        ('c', 'a', 'b', 'd')
    """
    count = min(count, len(ranking))
    ids = tuple(ranking.ids[i] for i in full_order(order, count)) + ranking.ids[count:]
    return Ranking(ids, ranking.scores)


def full_order(order: Sequence[int], count: int) -> list[int]:
    """All positions 0..count-1: those of ``order`` first (once each), the rest in their order.

    Example:
        >>> full_order([2, 2, 7], 4)
        [2, 0, 1, 3]
    """
    head = list(dict.fromkeys(i for i in order if 0 <= i < count))
    return head + [i for i in range(count) if i not in set(head)]


def order_by_scores(scores: Sequence[float | None]) -> list[int]:
    """Positions sorted by descending score, the earlier position first among equal scores.

    Positions without a score (None) stay where they are; the scored ones are sorted into the
    remaining places.

    Example:
        >>> order_by_scores([0.2, None, 0.9, 0.2])
        [2, 1, 0, 3]
    """
    scored = sorted(
        (i for i, s in enumerate(scores) if s is not None), key=lambda i: (-scores[i], i)
    )
    ranked = iter(scored)
    return [i if scores[i] is None else next(ranked) for i in range(len(scores))]


def movements(before: Ranking, after: Ranking, count: int) -> list[dict[str, Any]]:
    """How each of the first ``count`` candidates of ``before`` moved (1-based ranks).

    Example:
        >>> movements(Ranking(("a", "b"), (2, 1)), Ranking(("b", "a"), (2, 1)), 2)
        [{'id': 'a', 'from': 1, 'to': 2}, {'id': 'b', 'from': 2, 'to': 1}]
    """
    position = {id_: rank for rank, id_ in enumerate(after.ids, start=1)}
    return [
        {"id": id_, "from": rank, "to": position[id_]}
        for rank, id_ in enumerate(before.ids[:count], start=1)
    ]


def _label_lists(text: str) -> Iterator[list[Any]]:
    """Candidate label lists found in ``text``, most trustworthy first."""
    values = list(_json_values(text))
    keyed = [v for v in values if isinstance(v, dict)]
    for value in reversed(keyed):
        labels = _from_dict(value)
        if labels is not None:
            yield labels
    for value in reversed(values):
        if isinstance(value, list):
            yield value
    stripped = text.strip()
    if _BARE_ORDER.match(stripped):
        yield _INTEGER.findall(stripped)


def _json_values(text: str) -> Iterator[Any]:
    """Every top-level JSON object or array in ``text`` (also inside code fences), in order."""
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text):
        if text[position] in "{[":
            try:
                value, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError:
                position += 1
                continue
            yield value
            position = end
        else:
            position += 1


def _from_dict(value: dict[str, Any]) -> list[Any] | None:
    lowered = {str(k).lower(): v for k, v in value.items()}
    for key in ORDER_KEYS:
        if key in lowered:
            found = lowered[key]
            if isinstance(found, list):
                return found
            if isinstance(found, str | int):
                return _INTEGER.findall(str(found))
            if isinstance(found, dict):
                return _from_dict(found)
    indexed = [v for k, v in lowered.items() if _TOP_K_INDICES.fullmatch(k)]
    return indexed[0] if indexed and isinstance(indexed[0], list) else None


def _label_number(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str):
        match = _INTEGER.search(item)
        return int(match.group()) if match else None
    if isinstance(item, dict):
        lowered = {str(k).lower(): v for k, v in item.items()}
        for key in ITEM_KEYS:
            if key in lowered:
                return _label_number(lowered[key])
    return None


def _resolve(labels: list[Any], count: int) -> ParsedOrder | None:
    numbers = [_label_number(item) for item in labels]
    readable = [n for n in numbers if n is not None]
    zero_based = 0 in readable and count not in readable
    offset = 0 if zero_based else 1
    order: list[int] = []
    dropped: list[Any] = []
    duplicates = 0
    for item, number in zip(labels, numbers, strict=True):
        position = None if number is None else number - offset
        if position is None or not 0 <= position < count:
            dropped.append(item)
        elif position in order:
            duplicates += 1
        else:
            order.append(position)
    if not order:
        return None
    return ParsedOrder(tuple(order), tuple(dropped), duplicates, zero_based)
