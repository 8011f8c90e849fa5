"""Decisions on a verifier's confidences: fusing branches, tie-breaking, triggering refinement.

A branch is one way of searching (a text query, an image query) whose top candidates a yes/no
verifier scored: ``{gallery id: P(yes)}``. These rules are pure functions, so any pipeline with
verified branches can use them, and their decisions can be checked by hand.

WISER (Wang et al., WISER: Wider Search, Deeper Thinking, and Adaptive Fusion for Training-Free
Zero-Shot Composed Image Retrieval, CVPR 2026, arXiv 2602.23029) ranks the union of its two
branches' top-50 lists by the sum of their confidences (0 where a branch did not retrieve the
candidate), breaks ties by the larger of the two confidences, then by the text branch's, then by
id; and refines a branch whose best confidence does not exceed tau = 0.7.

Example:
    >>> fuse_confidences([{"a": 0.9, "b": 0.4}, {"b": 0.5, "c": 0.9}])
    [('a', 0.9), ('c', 0.9), ('b', 0.9)]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from cir.prompts import ParseError

TIE_RULES = ("max", "first", "id")
"""Tie-breakers, applied in the order given: the larger single confidence, the first branch's
confidence, the gallery id (ascending)."""

Confidences = Mapping[str, float | None]
_NO_CHANGE = re.compile(r"no change (is )?needed|good retrieval", re.IGNORECASE)
_MODIFICATION_EDGES = ".?, "
_SUGGESTION_EDGES = ".?,\"' "
_SUGGESTION = re.compile(r"suggestion\s*\**\s*:\s*\**", re.IGNORECASE)


def fuse_confidences(
    branches: Sequence[Confidences],
    ties: Sequence[str] = TIE_RULES,
    missing: float = 0.0,
) -> list[tuple[str, float]]:
    """Every candidate of any branch with its summed confidence, best first.

    Args:
        branches: per branch, the verifier's confidence for each candidate it retrieved
            (None: the verifier gave no score).
        ties: tie-breakers (see :data:`TIE_RULES`), applied in order; candidates still tied
            keep the order in which the branches listed them.
        missing: the confidence of a candidate a branch did not retrieve (or did not score).

    Returns:
        ``(id, summed confidence)`` pairs, best first.
    """
    unknown = [t for t in ties if t not in TIE_RULES]
    if unknown:
        raise ValueError(f"unknown tie-breaker(s) {unknown}; valid: {', '.join(TIE_RULES)}")
    table = {i: [_value(b.get(i), missing) for b in branches] for b in branches for i in b}

    def order(item: tuple[str, list[float]]) -> tuple:
        gid, scores = item
        breakers = {"max": -max(scores), "first": -scores[0], "id": gid}
        return (-sum(scores), *(breakers[t] for t in ties))

    return [(gid, sum(scores)) for gid, scores in sorted(table.items(), key=order)]


def _value(confidence: float | None, missing: float) -> float:
    return missing if confidence is None else float(confidence)


def best_candidate(confidences: Confidences, order: Sequence[str]) -> tuple[str | None, float]:
    """The candidate with the highest confidence (the better-ranked one on ties) and that
    confidence; ``(None, 0.0)`` when nothing was scored."""
    scored = [(i, c) for i in order if (c := confidences.get(i)) is not None]
    if not scored:
        return None, 0.0
    best = max(scored, key=lambda item: item[1])  # max keeps the first of equals
    return best[0], float(best[1])


def needs_refinement(confidence: float, tau: float) -> bool:
    """Whether a branch whose best confidence is ``confidence`` gets a refinement round: when it
    does not exceed ``tau`` (WISER's reference code stops only above the threshold)."""
    return confidence <= tau


def refined_instruction(modification: str, suggestion: str) -> str:
    """The next round's instruction: the modification and the refiner's suggestion, joined as
    WISER joins them (``"<modification> and <suggestion>."``)."""
    return f"{modification.strip(_MODIFICATION_EDGES)} and {suggestion.strip(_SUGGESTION_EDGES)}."


def read_suggestion(text: str) -> str | None:
    """The refiner's suggestion: the text after ``Suggestion:`` (or the whole answer when it has
    no such label); None when the answer says no change is needed.

    Raises:
        ParseError: the answer is empty.
    """
    if _NO_CHANGE.search(text):
        return None
    match = _SUGGESTION.search(text)
    suggestion = text[match.end() :] if match else text
    suggestion = " ".join(suggestion.split()).strip("*\"' ")
    if not suggestion:
        raise ParseError("the refiner's answer holds no suggestion")
    return suggestion
