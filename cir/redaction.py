"""One redaction for every message, log line, trace, manifest and page: no credential gets out.

:func:`redact` masks, in any text:

- the values of keys cir has read at run time (:func:`register_secret`: an LLM backend registers
  the key it reads, whatever the environment variable is called),
- ``Authorization``/``Bearer``/``Basic`` credentials and ``key=value`` or ``"api_key": "..."``
  pairs whose name says secret (``api_key``, ``token``, ``password``, ``secret``, ...),
- the user info (``user:pass@``) and the query string of URLs,
- the shapes of well-known keys: ``sk-...`` (OpenAI and compatible), ``hf_...``, ``ghp_...``,
  AWS access key ids, Slack and Google API keys, JSON web tokens.

:func:`redact_value` applies it to every string of a nested dict or list and masks whole values
whose key says secret. Names of environment variables (``api_key_env: MY_KEY``) are kept: they
are not secrets.

Example:
    >>> redact("POST https://u:pw@api.example.org/v1?api-key=abc failed: Bearer sk-abc123def456")
    'POST https://***@api.example.org/v1?*** failed: Bearer ***'
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

MASK = "***"
_MIN_SECRET = 6
_SECRET_WORDS = {"apikey", "token", "secret", "password", "passwd", "credential", "auth"}
#: ``key`` says secret alone or after one of these (``api_key``, ``private-key``), not after any
#: word (``restrict_key``, ``reasoning_key`` name fields of a configuration).
_KEY_OWNERS = {"api", "access", "private", "secret", "client", "auth", "service", "subscription"}
_NAME = r"(?:[a-z0-9_.-]*?(?:apikey|access[_-]?token|token|secret|password|passwd|pwd" \
    r"|credentials?|authorization|auth|signature|sig|(?:api|access|private|client|service" \
    r"|subscription)[_-]?key)|key)"  # fmt: skip
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[a-z0-9._~+/=:-]{6,}"), rf"\1\2{MASK}"),
    (
        re.compile(rf"""(?i)(["']?\b{_NAME}["']?\s*[:=]\s*["']?)([^"'\s&,;<>)}}]{{4,}})"""),
        rf"\1{MASK}",
    ),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), f"sk-{MASK}"),
    (re.compile(r"\bhf_[A-Za-z0-9]{10,}"), f"hf_{MASK}"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), f"gh_{MASK}"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), f"AKIA{MASK}"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), f"xox-{MASK}"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), f"AIza{MASK}"),
    (re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}"), f"jwt-{MASK}"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]+@"), rf"\1{MASK}@"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]+"), rf"\1?{MASK}"),
]
_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a credential read at run time, so every later :func:`redact` masks it."""
    if value and len(value) >= _MIN_SECRET:
        with _lock:
            _registered.add(value)


def secret_values() -> list[str]:
    """Registered credentials and values of secret-looking environment variables, longest first."""
    with _lock:
        values = set(_registered)
    values.update(v for k, v in os.environ.items() if looks_secret(k) and len(v) >= _MIN_SECRET)
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``***``."""
    if not isinstance(text, str) or not text:
        return text
    for value in secret_values():
        text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any) -> Any:
    """A copy of a nested dict/list with secret-named values masked and every string redacted."""
    if isinstance(value, dict):
        return {k: MASK if _is_secret_field(k, v) else redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def _is_secret_field(name: Any, value: Any) -> bool:
    if not isinstance(name, str) or not looks_secret(name) or value in (None, ""):
        return False
    return isinstance(value, str)


def looks_secret(name: str) -> bool:
    """``OPENAI_API_KEY``, ``api_key``, ``HF_TOKEN``, ``key`` yes; ``max_tokens``, ``api_key_env``,
    ``restrict_key`` no."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if not words or words[-1] == "env":
        return False
    owned_key = any(
        w == "key" and (i == 0 or words[i - 1] in _KEY_OWNERS) for i, w in enumerate(words)
    )
    return owned_key or any(w in _SECRET_WORDS for w in words)
