"""The probability that a verifier's answer is "yes", from first-token log-probabilities or text.

Backends report the top-k first tokens as text, in the tokenizer's spelling: ``"Yes"``, ``" yes"``,
``"ĠYes"`` (byte-level BPE) or ``"▁yes"`` (SentencePiece). All spellings of yes are pooled, all
spellings of no are pooled, and the score is the share of yes in the two:
``P(yes) / (P(yes) + P(no))``. When one side is missing from the top-k its probability is at most
that of the least likely listed token, which is used as its estimate.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

YES_WORDS = frozenset({"yes", "true"})
NO_WORDS = frozenset({"no", "false"})
_MARKERS = "Ġ▁Ċ"
_FIRST_WORD = re.compile(r"[a-z]+")


def normalise_token(token: str) -> str:
    """A token in plain lowercase, without tokenizer space markers, whitespace or punctuation."""
    return token.strip(_MARKERS).strip().strip("\"'*.,:;!()[]{}`").lower()


def yes_probability(logprobs: Mapping[str, float] | None) -> float | None:
    """P(yes) among yes and no from first-token log-probabilities, or None when neither is there.

    Example:
        >>> round(yes_probability({"Yes": -0.2, " No": -1.8, "The": -3.0}), 3)
        0.832
    """
    if not logprobs:
        return None
    yes = no = 0.0
    for token, logprob in logprobs.items():
        word = normalise_token(token)
        if word in YES_WORDS:
            yes += math.exp(logprob)
        elif word in NO_WORDS:
            no += math.exp(logprob)
    if yes == 0.0 and no == 0.0:
        return None
    floor = min(math.exp(v) for v in logprobs.values())
    yes, no = yes or floor, no or floor
    return yes / (yes + no)


def parse_yes_no(text: str | None) -> float | None:
    """1.0 for an answer that says yes, 0.0 for no, None when it says neither.

    Reads the first word of the answer, or the ``answer`` field of a JSON object.

    Example:
        >>> parse_yes_no("**Yes** - the dress is now red."), parse_yes_no("No."), parse_yes_no("?")
        (1.0, 0.0, None)
    """
    if not text:
        return None
    text = _json_answer(text) or text
    match = _FIRST_WORD.search(text.lower())
    if match is None:
        return None
    word = match.group()
    if word in YES_WORDS:
        return 1.0
    if word in NO_WORDS:
        return 0.0
    return None


def _json_answer(text: str) -> str | None:
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict):
        answer = value.get("answer", value.get("match"))
        if isinstance(answer, bool):
            return "yes" if answer else "no"
        if isinstance(answer, str):
            return answer
    return None
