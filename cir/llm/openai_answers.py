"""Reading an OpenAI-compatible chat completion defensively: every field is checked before use.

A server is not trusted: a body that is not JSON, nested too deeply, or shaped unlike a chat
completion (``choices: [{...}, 5]``, a non-text ``content``, a non-integer ``usage``) is reported
as a malformed answer instead of escaping as a raw exception, and whatever is quoted from it is
redacted first (servers may echo the key back).
"""

from __future__ import annotations

import json
from typing import Any

from cir.errors import BackendError
from cir.llm.base import ChatRequest, Generation
from cir.redaction import redact


def decode_answer(raw: bytes, text: str) -> dict[str, Any] | tuple[str, None]:
    """The parsed body of a 200 answer, or why it is not a chat completion (retried)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        return "malformed JSON body (nested too deeply)", None
    except ValueError:
        return f"malformed JSON body {excerpt(text)!r}", None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return f"answer without 'choices': {excerpt(text)!r}", None
    problem = _choices_problem(body["choices"]) or _usage_problem(body.get("usage"))
    if problem:
        return f"malformed answer ({problem}): {excerpt(text)!r}", None
    return body


def _choices_problem(choices: list) -> str | None:
    for n, choice in enumerate(choices):
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            return f"choice {n} is not an object with a 'message'"
        if not isinstance(choice["message"].get("content") or "", str):
            return f"choice {n} has non-text content"
        if not isinstance(choice.get("index", 0), int):
            return f"choice {n} has a non-integer index"
    return None


def _usage_problem(usage: Any) -> str | None:
    if usage is None:
        return None
    if not isinstance(usage, dict):
        return "'usage' is not an object"
    for name in ("prompt_tokens", "completion_tokens"):
        value = usage.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"'usage.{name}' is not an integer"
    return None


def parse(body: dict[str, Any], req: ChatRequest, url: str, n: int | None = None) -> Generation:
    choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
    want = req.n if n is None else n
    if len(choices) < want:
        raise BackendError(
            f"{url} returned {len(choices)} of the n={want} samples asked for; this server "
            "ignores n: set split_n: true to ask for one sample per request"
        )
    texts = [(c["message"].get("content") or "").strip() for c in choices[:want]]
    logprobs = [_top_logprobs(c, url) for c in choices[:want]] if req.logprobs else None
    usage = body.get("usage") or {}
    return Generation(
        texts=texts,
        first_token_logprobs=logprobs,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )


def _top_logprobs(choice: dict[str, Any], url: str) -> dict[str, float]:
    try:
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content:
            return {}
        first = content[0]
        top = first.get("top_logprobs") or [first]
        return {str(t["token"]): float(t["logprob"]) for t in top}
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        raise BackendError(
            f"{url} answered logprobs in an unknown shape: {excerpt(str(choice))!r}"
        ) from None


def join(rows):
    rows = list(rows)
    return None if any(r is None for r in rows) else [r[0] for r in rows]


def total(values):
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def excerpt(text: str, limit: int = 200) -> str:
    """A short, redacted quote of what a server sent (servers may echo the key back)."""
    text = redact(" ".join(text[: limit * 8].split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
