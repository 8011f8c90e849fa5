"""OpenAI-compatible chat completions over HTTP: OpenAI, vLLM's server, Ollama, any ``base_url``.

Requests of a batch run concurrently (at most ``max_concurrency`` at once) on an async httpx
client; ``generate`` itself is synchronous. 429, 5xx, timeouts, dropped connections and malformed
bodies are retried with exponential backoff and jitter (``Retry-After`` is honoured); other errors
and exhausted retries raise :class:`~cir.errors.BackendError` naming the URL and what to check.
The API key is read from the environment variable named by ``api_key_env`` at request time; it
is never stored on the backend, in its identity, or in messages.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import certifi
import httpx

from cir.errors import BackendError, ConfigError
from cir.llm.base import ChatRequest, Generation, check_batch
from cir.llm.images import to_data_url
from cir.resources import Resources

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0", "host.docker.internal")


@dataclass(frozen=True)
class Options:
    """Spec options of ``{"backend": "openai", ...}``.

    Attributes:
        model: the model name the server knows.
        base_url: the API root (``.../v1``); ``/chat/completions`` is appended.
        api_key_env: NAME of the environment variable holding the key (null: send no key).
            A missing key is an error except for servers on this machine.
        timeout: seconds for one HTTP request.
        max_retries: retries after the first attempt (429, 5xx, timeouts, bad bodies).
        backoff: first retry delay in seconds, doubled each retry, with jitter.
        max_backoff: longest wait between attempts (also caps ``Retry-After``).
        max_concurrency: most requests in flight at once.
        max_image_side: images are scaled down to this many pixels on their longer side.
        image_format: ``jpeg`` or ``png`` for the base64 data URLs.
        split_n: send ``n`` requests of one sample each (seeds ``seed``, ``seed+1``, ...) for
            servers that ignore ``n``.
    """

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_concurrency: int = 8
    max_image_side: int | None = 1024
    image_format: Literal["jpeg", "png"] = "jpeg"
    split_n: bool = False

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        for name in ("timeout", "max_concurrency"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_retries < 0 or self.backoff < 0:
            raise ValueError("max_retries and backoff must be >= 0")


class OpenAICompatibleLLM:
    """A chat-completions endpoint behind the backend protocol.

    Example:
        >>> llm = OpenAICompatibleLLM(Options(model="Qwen/Qwen2.5-7B-Instruct",
        ...                                   base_url="http://127.0.0.1:8000/v1"))
        >>> llm.generate([ChatRequest.from_prompt("Say hi.")])[0].text

    Attributes:
        stats: counts of HTTP ``attempts`` and ``retries`` since creation.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.url = options.base_url.rstrip("/") + "/chat/completions"
        self.identity = f"openai:{_public_url(options.base_url)}:{options.model}"
        self.stats = {"attempts": 0, "retries": 0}
        self._stats_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None  # built once: it costs more than a request
        self._headers()  # a missing key fails now, not at the first request

    def __repr__(self) -> str:
        return f"OpenAICompatibleLLM(identity={self.identity!r})"

    def generate(self, requests: list[ChatRequest]) -> list[Generation]:
        """Send every request (concurrently, bounded); results come back in request order."""
        requests = check_batch("OpenAICompatibleLLM", requests, beam_search=False)
        if not requests:
            return []
        return _run_sync(self._generate_all(requests))

    async def _generate_all(self, requests: list[ChatRequest]) -> list[Generation]:
        limits = httpx.Limits(max_connections=self.options.max_concurrency)
        gate = asyncio.Semaphore(self.options.max_concurrency)
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=certifi.where())
        async with httpx.AsyncClient(
            timeout=self.options.timeout, limits=limits, headers=self._headers(), verify=self._ssl
        ) as client:
            jobs = [self._generate_one(client, gate, req) for req in requests]
            return list(await asyncio.gather(*jobs))

    async def _generate_one(self, client, gate, req: ChatRequest) -> Generation:
        if not self.options.split_n or req.n == 1:
            body = await self._post(client, gate, self._payload(req, req.n, req.seed))
            return _parse(body, req, self.url)
        payload = self._payload(req, 1, req.seed)  # images encoded once for all samples
        bodies = await asyncio.gather(
            *(self._post(client, gate, {**payload, "seed": req.seed + i}) for i in range(req.n))
        )
        parts = [_parse(b, req, self.url, n=1) for b in bodies]
        return Generation(
            texts=[p.text for p in parts],
            first_token_logprobs=_join(p.first_token_logprobs for p in parts),
            prompt_tokens=parts[0].prompt_tokens,
            completion_tokens=_sum(p.completion_tokens for p in parts),
        )

    def _payload(self, req: ChatRequest, n: int, seed: int) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.options.model,
            "messages": [self._message(m) for m in req.messages],
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "seed": seed,
            "n": n,
        }
        if req.json_mode:
            payload["response_format"] = {"type": "json_object"}
        if req.logprobs:
            payload.update(logprobs=True, top_logprobs=req.logprobs)
        return payload

    def _message(self, message) -> dict[str, Any]:
        if not message.images:
            return {"role": message.role, "content": message.content}
        opts = self.options
        parts: list[dict[str, Any]] = [
            {
                "type": "image_url",
                "image_url": {"url": to_data_url(im, opts.max_image_side, opts.image_format)},
            }
            for im in message.images
        ]
        if message.content:
            parts.append({"type": "text", "text": message.content})
        return {"role": message.role, "content": parts}

    async def _post(self, client, gate, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries; the parsed JSON body of a successful answer."""
        problem = ""
        for attempt in range(self.options.max_retries + 1):
            if attempt:
                self._count("retries")
            self._count("attempts")
            async with gate:
                outcome = await self._attempt(client, payload)
            if isinstance(outcome, dict):
                return outcome
            problem, wait = outcome
            if attempt < self.options.max_retries:
                await asyncio.sleep(self._delay(attempt, wait))
        raise BackendError(
            f"request to {self.url} failed after {self.options.max_retries + 1} attempts: "
            f"{problem}. Check that the server is up and serves model {self.options.model!r} "
            "(its logs say more), or raise max_retries/timeout."
        )

    async def _attempt(self, client, payload) -> dict[str, Any] | tuple[str, float | None]:
        """One HTTP round trip: the body, or (what went wrong, server-requested wait)."""
        try:
            response = await client.post(self.url, json=payload)
        except httpx.TimeoutException:
            return f"no answer within {self.options.timeout} s (timeout)", None
        except httpx.ConnectError as exc:
            return f"cannot connect ({exc or 'connection refused'}); is the server running?", None
        except httpx.TransportError as exc:
            return f"connection failed ({type(exc).__name__}: {exc})", None
        if response.status_code in _RETRY_STATUS:
            wait = _retry_after(response.headers.get("retry-after"))
            return f"HTTP {response.status_code} {_excerpt(response.text)}", wait
        if response.status_code >= 400:
            raise BackendError(self._refusal(response))
        try:
            body = response.json()
        except ValueError:
            return f"malformed JSON body {_excerpt(response.text)!r}", None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            return f"answer without 'choices': {_excerpt(response.text)!r}", None
        return body

    def _refusal(self, response: httpx.Response) -> str:
        hint = {
            401: f"the API key was refused: check the key in ${self.options.api_key_env}",
            403: f"access denied: check the key in ${self.options.api_key_env} and its rights",
            404: f"check base_url ({self.options.base_url}) and that model "
            f"{self.options.model!r} exists on the server",
        }.get(response.status_code, "the server refused the request as sent")
        return f"{self.url} answered HTTP {response.status_code} {_excerpt(response.text)}: {hint}"

    def _delay(self, attempt: int, server_wait: float | None) -> float:
        jittered = self.options.backoff * (2**attempt) * random.uniform(0.5, 1.0)
        return min(self.options.max_backoff, max(jittered, server_wait or 0.0))

    def _headers(self) -> dict[str, str]:
        name = self.options.api_key_env
        key = os.environ.get(name) if name else None
        if key:
            return {"Authorization": f"Bearer {key}"}
        if name and not _is_local(self.options.base_url):
            raise ConfigError(
                f"no API key for {_public_url(self.options.base_url)}: the environment variable "
                f"{name} is not set. Export it, point api_key_env at the variable that holds the "
                "key, or set api_key_env to null for a server without keys."
            )
        return {}

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1


def _parse(body: dict[str, Any], req: ChatRequest, url: str, n: int | None = None) -> Generation:
    choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
    want = req.n if n is None else n
    if len(choices) < want:
        raise BackendError(
            f"{url} returned {len(choices)} of the n={want} samples asked for; this server "
            "ignores n: set split_n: true to ask for one sample per request"
        )
    try:
        texts = [(c["message"].get("content") or "").strip() for c in choices[:want]]
    except (KeyError, AttributeError, TypeError):
        raise BackendError(f"{url} answered choices without a message: {choices[:1]!r}") from None
    logprobs = [_top_logprobs(c) for c in choices[:want]] if req.logprobs else None
    usage = body.get("usage") or {}
    return Generation(
        texts=texts,
        first_token_logprobs=logprobs,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )


def _top_logprobs(choice: dict[str, Any]) -> dict[str, float]:
    content = (choice.get("logprobs") or {}).get("content") or []
    if not content:
        return {}
    first = content[0]
    top = first.get("top_logprobs") or [first]
    return {t["token"]: float(t["logprob"]) for t in top}


def _join(rows):
    rows = list(rows)
    return None if any(r is None for r in rows) else [r[0] for r in rows]


def _sum(values):
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _public_url(url: str) -> str:
    """The URL without user info or query string (which could carry credentials)."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def _is_local(url: str) -> bool:
    host = httpx.URL(url).host
    return host in _LOCAL_HOSTS or host.startswith("127.")


def _run_sync(coro):
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the calling thread
            result["error"] = exc

    worker = threading.Thread(target=target, name="cir-openai")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def build(options: Options, resources: Resources | None = None) -> OpenAICompatibleLLM:
    """The backend for a validated spec."""
    return OpenAICompatibleLLM(options)
