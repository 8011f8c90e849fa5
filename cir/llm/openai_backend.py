"""OpenAI-compatible chat completions over HTTP: OpenAI, vLLM's server, Ollama, any ``base_url``.

Requests of a batch run concurrently (at most ``max_concurrency`` at once) on an async httpx
client; ``generate`` itself is synchronous. 429, 5xx, timeouts, dropped connections and malformed
bodies are retried with exponential backoff and jitter (``Retry-After`` is honoured); other errors
and exhausted retries raise :class:`~cir.errors.BackendError` naming the URL and what to check.
Every request has an overall deadline (``timeout``, to the last byte) and a size limit
(``max_response_bytes``), and every answer is checked for shape before it is used, so a slow,
huge or malformed answer is an error, never a hang or a crash.
The API key is read from the environment variable named by ``api_key_env`` at request time; it
is never stored on the backend, in its identity, or in messages: it is registered with
:mod:`cir.redaction`, and everything quoted from a server or a URL is redacted.
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
from cir.llm.openai_answers import decode_answer, excerpt, join, parse, total
from cir.redaction import redact, register_secret
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
        timeout: seconds for one HTTP request, from sending it to the last byte of the answer
            (a server that keeps sending a byte now and then cannot hold a request longer).
        max_retries: retries after the first attempt (429, 5xx, timeouts, bad bodies).
        backoff: first retry delay in seconds, doubled each retry, with jitter.
        max_backoff: longest wait between attempts (also caps ``Retry-After``).
        max_concurrency: most requests in flight at once.
        max_image_side: images are scaled down to this many pixels on their longer side.
        image_format: ``jpeg`` or ``png`` for the base64 data URLs.
        split_n: send ``n`` requests of one sample each (seeds ``seed``, ``seed+1``, ...) for
            servers that ignore ``n``.
        max_response_bytes: largest answer body accepted; a larger one is refused unread.
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
    max_response_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        for name in ("timeout", "max_concurrency", "max_response_bytes"):
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
        self._endpoint = _endpoint(options.base_url)  # may carry user info and a query
        self.url = _public_url(str(self._endpoint))  # what messages show
        self.identity = identity(options)
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
            return parse(body, req, self.url)
        payload = self._payload(req, 1, req.seed)  # images encoded once for all samples
        bodies = await asyncio.gather(
            *(self._post(client, gate, {**payload, "seed": req.seed + i}) for i in range(req.n))
        )
        parts = [parse(b, req, self.url, n=1) for b in bodies]
        return Generation(
            texts=[p.text for p in parts],
            first_token_logprobs=join(p.first_token_logprobs for p in parts),
            prompt_tokens=parts[0].prompt_tokens,
            completion_tokens=total(p.completion_tokens for p in parts),
        )

    def _payload(self, req: ChatRequest, n: int, seed: int) -> dict[str, Any]:
        if req.min_tokens:
            raise ConfigError(
                f"the OpenAI-compatible API has no minimum answer length (min_tokens="
                f"{req.min_tokens}); set min_tokens: 0 for {self.identity}"
            )
        payload: dict[str, Any] = {
            "model": self.options.model,
            "messages": [self._message(m) for m in req.messages],
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "seed": seed,
            "n": n,
        }
        if req.stop:
            payload["stop"] = list(req.stop)
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
                "image_url": {"url": to_data_url(value, opts.max_image_side, opts.image_format)},
            }
            if kind == "image"
            else {"type": "text", "text": value}
            for kind, value in message.parts()
        ]
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
            status, headers, raw = await asyncio.wait_for(
                self._exchange(client, payload), self.options.timeout
            )
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return f"no answer within {self.options.timeout} s (timeout)", None
        except httpx.ConnectError as exc:
            return (
                f"cannot connect ({_clean(exc) or 'connection refused'}); is the server running?",
                None,
            )
        except httpx.TransportError as exc:
            return f"connection failed ({type(exc).__name__}: {_clean(exc)})", None
        text = raw.decode("utf-8", "replace")
        if status in _RETRY_STATUS:
            return f"HTTP {status} {excerpt(text)}", _retry_after(headers.get("retry-after"))
        if status >= 400:
            raise BackendError(self._refusal(status, text))
        return decode_answer(raw, text)

    async def _exchange(self, client, payload) -> tuple[int, httpx.Headers, bytes]:
        """POST and read the answer, refusing it as soon as it outgrows the size limit."""
        limit = self.options.max_response_bytes
        async with client.stream("POST", self._endpoint, json=payload) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise BackendError(self._too_large(int(declared)))
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise BackendError(self._too_large(size))
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    def _too_large(self, size: int) -> str:
        return (
            f"{self.url} sent an answer of more than {self.options.max_response_bytes} bytes "
            f"({size} so far); it was refused. If the server is trusted and its answers are "
            "that large, raise max_response_bytes."
        )

    def _refusal(self, status: int, text: str) -> str:
        hint = {
            401: f"the API key was refused: check the key in ${self.options.api_key_env}",
            403: f"access denied: check the key in ${self.options.api_key_env} and its rights",
            404: f"check base_url ({_public_url(self.options.base_url)}) and that model "
            f"{self.options.model!r} exists on the server",
        }.get(status, "the server refused the request as sent")
        return f"{self.url} answered HTTP {status} {excerpt(text)}: {hint}"

    def _delay(self, attempt: int, server_wait: float | None) -> float:
        jittered = self.options.backoff * (2**attempt) * random.uniform(0.5, 1.0)
        return min(self.options.max_backoff, max(jittered, server_wait or 0.0))

    def _headers(self) -> dict[str, str]:
        name = self.options.api_key_env
        key = os.environ.get(name) if name else None
        if key:
            register_secret(key)  # masked in every message from now on, whatever its name
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


def _clean(exc: BaseException) -> str:
    return redact(str(exc))


def _endpoint(base_url: str) -> httpx.URL:
    """``<base_url>/chat/completions``, keeping the base URL's user info and query string
    (sent as given, never shown); their values are registered as secrets."""
    parsed = httpx.URL(base_url)
    register_secret(parsed.password)
    for _, value in parsed.params.multi_items():
        register_secret(value)
    return parsed.copy_with(path=parsed.path.rstrip("/") + "/chat/completions")


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


def identity(options: Options) -> str:
    """The backend's identity for ``options`` (no credential: the URL's user info is dropped)."""
    return f"openai:{_public_url(options.base_url)}:{options.model}"


def build(options: Options, resources: Resources | None = None) -> OpenAICompatibleLLM:
    """The backend for a validated spec."""
    return OpenAICompatibleLLM(options)
