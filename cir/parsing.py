"""Tolerant extraction of structured answers from model text (JSON in prose, code fences)."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any | None:
    """The first JSON object or array found in ``text``, or None.

    Tries, in order: the whole text, the contents of code fences, then every balanced
    ``{...}``/``[...]`` span starting from the left.

    Example:
        >>> extract_json('Sure! ```json\\n{"order": [2, 1]}\\n``` Hope this helps.')
        {'order': [2, 1]}
    """
    if not text:
        return None
    candidates = [text.strip(), *(m.strip() for m in _FENCE.findall(text))]
    for candidate in candidates:
        value = _loads(candidate)
        if value is not None:
            return value
    return _first_balanced(text)


def _loads(text: str) -> Any | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict | list) else None


def _first_balanced(text: str) -> Any | None:
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict | list):
            return value
    return None
