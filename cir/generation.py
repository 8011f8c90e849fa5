"""Prompted generation for many queries at once: cache first, one batch, parse, declared fallbacks.

Every language stage (captioning, recomposition, one-stage reasoning, re-ranking) goes through
:class:`Generator`: it renders a prompt for each item, looks every request up in the content
cache, sends the misses to the backend in batches, stores the raw texts, parses them with the
prompt's parser (or the caller's), and applies the fallback policy to answers that do not parse.
Cache hits, misses, fallbacks and retries are counted in each item's ``StageRecord``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from cir.cache import CacheEntry, ContentCache, fingerprint_image
from cir.errors import CirError, ConfigError, DataError
from cir.images import load_image
from cir.llm import ChatRequest, Generation, LLMBackend, Sampling
from cir.prompts import FallbackPolicy, ParseError, Parser, Prompt
from cir.types import StageRecord

ImageInput = str | Path | Image.Image


class AnswerParseError(CirError):
    """An answer could not be parsed and the fallback policy says to raise."""


def reads_logprobs(parser: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``parser`` as one called with ``(text, first_token_logprobs)`` instead of ``(text)``.

    A yes/no verifier reads P(yes) from the log-probabilities and falls back to the text; when
    neither holds an answer it raises ``ParseError``, and the generator's retry policy applies.
    """
    parser.reads_logprobs = True  # type: ignore[attr-defined]
    return parser


@dataclass
class Ask:
    """One item to generate for.

    Args:
        variables: values of the prompt's variables.
        images: images attached to the user message (paths are read only on a cache miss).
        fallback: the value used when the answer does not parse and the policy falls back.
        record: the stage's trace record for the query this item belongs to (counts go there).
        parser: a parser for this item only (overrides the generator's); see
            :func:`reads_logprobs` for parsers that need the first-token log-probabilities.
        labels: one text per image, shown just before it, after the prompt's text
            ("Reference image:", "Image 1:", ...); part of the cache key.
    """

    variables: Mapping[str, Any]
    images: Sequence[ImageInput] = ()
    fallback: Any = None
    record: StageRecord | None = None
    parser: Parser | None = None
    labels: Sequence[str] = ()


@dataclass
class Answer:
    """The result for one :class:`Ask`: ``n`` parsed values and the raw texts behind them.

    Attributes:
        values: parsed values, one per sample (the fallback value where parsing failed).
        texts: raw model texts, one per sample (of the last attempt for retried samples).
        logprobs: first-token log-probabilities per sample, when asked for.
        fallbacks: samples that ended on the fallback value.
        retries: extra requests made because answers did not parse.
        cached: whether the first attempt was served from the cache.
        errors: the parse errors met, in order.
    """

    values: list[Any]
    texts: list[str]
    logprobs: list[dict[str, float]] | None = None
    fallbacks: int = 0
    retries: int = 0
    cached: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def value(self) -> Any:
        """The first (or only) parsed value."""
        return self.values[0]


class Generator:
    """Turns (backend, prompt, variables, images, sampling) into parsed answers, batched and cached.

    Args:
        backend: the language backend (``cir.llm.load_backend(spec)``).
        prompt: the prompt to render.
        stage: the stage's registry name (part of every cache key).
        sampling: decoding settings (greedy and seeded by default).
        n: samples per item.
        json_mode: ask backends that can to constrain answers to JSON.
        logprobs: top-k first-token log-probabilities to request (0: none).
        cache: a :class:`~cir.cache.ContentCache`, or None to always ask the model.
        parser: overrides the prompt's parser (a callable raising ``ParseError``).
        fallback: overrides the prompt's fallback policy.
        chunk_size: requests per backend call (results are cached after each chunk, so an
            interrupted run keeps what it finished).
        kind: the cache entry kind (``llm``, ``caption``, ...; for ``cir cache info``).
        revision: the model's revision when the identity does not pin it (a hash of a local
            model folder: ``cir.cache.model_revision``).

    Example:
        >>> gen = Generator(load_backend(spec), load_prompt("recompose/general"), stage="recompose")
        >>> answers = gen.run([Ask({"caption": "a dog", "modification": "make it a cat"},
        ...                        fallback="make it a cat")])
        >>> answers[0].value
    """

    def __init__(
        self,
        backend: LLMBackend,
        prompt: Prompt,
        *,
        stage: str,
        sampling: Sampling | None = None,
        n: int = 1,
        json_mode: bool = False,
        logprobs: int = 0,
        cache: ContentCache | None = None,
        parser: Parser | None = None,
        fallback: FallbackPolicy | None = None,
        chunk_size: int = 64,
        kind: str = "llm",
        revision: str | None = None,
    ) -> None:
        self.backend = backend
        self.prompt = prompt
        self.stage = stage
        self.sampling = sampling or Sampling()
        self.n, self.json_mode, self.logprobs = n, json_mode, logprobs
        self.cache = cache
        self.parser = parser or prompt.parser()
        self.policy = fallback or prompt.fallback
        self.chunk_size = max(1, chunk_size)
        self.kind = kind
        self.revision = revision

    # ------------------------------------------------------------------ public
    def run(self, asks: Sequence[Ask]) -> list[Answer]:
        """Answer every item, in order."""
        asks = list(asks)
        for ask in asks:
            self.prompt.render(**ask.variables)  # strict check before any model call
        fingerprints = [[fingerprint_image(im) for im in ask.images] for ask in asks]
        jobs = [_Job(i, self.sampling, self.n) for i in range(len(asks))]
        outputs = self._complete(asks, fingerprints, jobs, attempt=0)
        parsed = [self._first_answer(ask, out) for ask, out in zip(asks, outputs, strict=True)]
        answers = [answer for answer, _ in parsed]
        failed = [slots for _, slots in parsed]
        self._retry(asks, fingerprints, answers, failed)
        for ask, answer, slots in zip(asks, answers, failed, strict=True):
            self._finish(ask, answer, slots)
        return answers

    def cache_entry(self, ask: Ask, texts: Sequence[str]) -> CacheEntry:
        """The cache entry that answers ``ask`` with ``texts`` (``n`` of them) on its first
        attempt: how known outputs (a paper's released captions and edits) are replayed."""
        if len(texts) != self.n:
            raise DataError(f"stage {self.stage!r} asks for {self.n} answer(s), got {len(texts)}")
        fingerprints = [fingerprint_image(image) for image in ask.images]
        parts = self.cache_key_parts(ask, fingerprints, _Job(0, self.sampling, self.n), 0)
        return CacheEntry(parts, {"texts": list(texts), "logprobs": None}, kind=self.kind)

    def cache_key_parts(
        self, ask: Ask, fingerprints: Sequence[str], job: _Job, attempt: int
    ) -> dict[str, Any]:
        """Everything that determines the raw answer to one request (hashed into its key)."""
        return {
            "stage": self.stage,
            "model": self.backend.identity,
            "revision": self.revision,
            "prompt": self.prompt.ref,
            "prompt_sha256": self.prompt.sha256,
            "sampling": self._settings(job),
            "variables": {k: str(v) for k, v in sorted(ask.variables.items())},
            "images": list(fingerprints),
            "attempt": attempt,
        } | ({"labels": list(ask.labels)} if ask.labels else {})

    # ------------------------------------------------------------------ requests
    def _complete(
        self, asks: list[Ask], fingerprints: list[list[str]], jobs: list[_Job], attempt: int
    ) -> list[_Output]:
        """Raw outputs for each job: from the cache where possible, else from the backend."""
        parts = [self.cache_key_parts(asks[j.item], fingerprints[j.item], j, attempt) for j in jobs]
        keys = [CacheEntry(p, None).key for p in parts]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        outputs: list[_Output | None] = [
            _Output(found[k]["texts"], found[k].get("logprobs"), True) if k in found else None
            for k in keys
        ]
        missing = [i for i, out in enumerate(outputs) if out is None]
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start : start + self.chunk_size]
            requests = [self._request(asks[jobs[i].item], jobs[i]) for i in chunk]
            generations = self.backend.generate(requests)
            _check_generations(generations, requests, self.backend)
            entries = []
            for i, gen in zip(chunk, generations, strict=True):
                outputs[i] = _Output(list(gen.texts), gen.first_token_logprobs, False)
                value = {"texts": list(gen.texts), "logprobs": gen.first_token_logprobs}
                entries.append(CacheEntry(parts[i], value, kind=self.kind))
            if self.cache is not None:
                self.cache.put_many(entries)
        for job, out in zip(jobs, outputs, strict=True):
            record = asks[job.item].record
            if record is not None:
                record.cache_hits += int(out.cached)
                record.cache_misses += int(not out.cached)
        return outputs  # type: ignore[return-value]

    def _request(self, ask: Ask, job: _Job) -> ChatRequest:
        images = tuple(load_image(im) for im in ask.images)
        messages = self.prompt.messages(ask.variables, images, ask.labels)
        return ChatRequest(messages, job.sampling, job.n, self.json_mode, self.logprobs)

    def _settings(self, job: _Job) -> dict[str, Any]:
        """The request settings that shape an answer (part of its cache key)."""
        return {
            **job.sampling.to_dict(),
            "n": job.n,
            "json_mode": self.json_mode,
            "logprobs": self.logprobs,
        }

    # ------------------------------------------------------------------ parsing
    def _parse(self, ask: Ask, text: str, logprobs: dict | None) -> tuple[Any, str | None]:
        parser = ask.parser or self.parser
        try:
            if getattr(parser, "reads_logprobs", False):
                return parser(text, logprobs), None
            return parser(text), None
        except ParseError as exc:
            return None, str(exc)

    def _first_answer(self, ask: Ask, out: _Output) -> tuple[Answer, list[int]]:
        """The parsed answer and the sample slots that did not parse."""
        answer = Answer([], list(out.texts), _copy(out.logprobs), cached=out.cached)
        failed = []
        for slot, text in enumerate(out.texts):
            value, error = self._parse(ask, text, _slot(out.logprobs, slot))
            answer.values.append(value)
            if error:
                answer.errors.append(error)
                failed.append(slot)
        return answer, failed

    def _retry(
        self,
        asks: list[Ask],
        fingerprints: list[list[str]],
        answers: list[Answer],
        failed: list[list[int]],
    ) -> None:
        """Ask again for the samples that did not parse, up to the policy's retries."""
        retries = self.policy.retries if self.policy.policy == "retry" else 0
        for attempt in range(1, retries + 1):
            pending = [i for i, slots in enumerate(failed) if slots]
            if not pending:
                return
            jobs = [_Job(i, self._retry_sampling(attempt), len(failed[i])) for i in pending]
            outputs = self._complete(asks, fingerprints, jobs, attempt)
            for job, out in zip(jobs, outputs, strict=True):
                failed[job.item] = self._apply_retry(
                    asks[job.item], answers[job.item], failed[job.item], out
                )

    def _retry_sampling(self, attempt: int) -> Sampling:
        """A new seed, and some temperature when the first request was greedy."""
        base = self.sampling
        temperature = base.temperature or self.policy.retry_temperature
        return replace(base, seed=base.seed + attempt, temperature=temperature, num_beams=1)

    def _apply_retry(self, ask: Ask, answer: Answer, slots: list[int], out: _Output) -> list[int]:
        answer.retries += 1
        still_failed = []
        for j, (slot, text) in enumerate(zip(slots, out.texts, strict=True)):
            answer.texts[slot] = text
            if answer.logprobs is not None and out.logprobs is not None:
                answer.logprobs[slot] = out.logprobs[j]
            value, error = self._parse(ask, text, _slot(out.logprobs, j))
            if error:
                answer.errors.append(error)
                still_failed.append(slot)
            else:
                answer.values[slot] = value
        return still_failed

    def _finish(self, ask: Ask, answer: Answer, failed: list[int]) -> None:
        """Apply the final policy to what still does not parse, and count it."""
        if failed and self.policy.final == "raise":
            raise AnswerParseError(
                f"prompt {self.prompt.ref}: the answer of {self.backend.identity} does not parse "
                f"({answer.errors[-1]}); raw answer: {_short(answer.texts[failed[0]])!r}. "
                "Set the stage's `fallback` param to 'fallback' or 'retry' to go on instead"
            )
        for slot in failed:
            answer.values[slot] = ask.fallback
        answer.fallbacks = len(failed)
        record = ask.record
        if record is None:
            return
        record.fallbacks += answer.fallbacks
        if answer.retries:
            record.notes["retries"] = record.notes.get("retries", 0) + answer.retries
        if answer.errors:
            record.notes.setdefault("parse_errors", []).extend(answer.errors)


@dataclass(frozen=True)
class _Job:
    item: int
    sampling: Sampling
    n: int


@dataclass(frozen=True)
class _Output:
    texts: list[str]
    logprobs: list[dict[str, float]] | None
    cached: bool


def _copy(logprobs: list[dict[str, float]] | None) -> list[dict[str, float]] | None:
    return [dict(d) for d in logprobs] if logprobs is not None else None


def _slot(logprobs: list[dict[str, float]] | None, slot: int) -> dict[str, float] | None:
    return logprobs[slot] if logprobs is not None and slot < len(logprobs) else None


def _check_generations(
    generations: list[Generation], requests: list[ChatRequest], backend: LLMBackend
) -> None:
    if len(generations) != len(requests):
        raise CirError(
            f"backend {backend.identity} returned {len(generations)} answers "
            f"for {len(requests)} requests"
        )
    for gen, req in zip(generations, requests, strict=True):
        if len(gen.texts) != req.n:
            raise CirError(
                f"backend {backend.identity} returned {len(gen.texts)} samples, {req.n} were asked"
            )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------- helpers for stages
def policy_override(
    prompt: Prompt, policy: str | None, retries: int | None
) -> FallbackPolicy | None:
    """The fallback policy a stage's ``fallback``/``retries`` params ask for (None: the prompt's).

    Example:
        >>> policy_override(prompt, "retry", 3)
        FallbackPolicy(policy='retry', retries=3, then='fallback', retry_temperature=0.7)
    """
    if policy is None and retries is None:
        return None
    base = prompt.fallback
    if policy is None:
        policy = "retry" if retries else base.final
    if policy != "retry":
        if retries:
            raise ConfigError(f"retries={retries} needs fallback policy 'retry', not {policy!r}")
        return FallbackPolicy(policy)
    count = retries if retries is not None else max(base.retries, 1)
    if count < 1:
        raise ConfigError("fallback policy 'retry' needs retries >= 1")
    return FallbackPolicy("retry", count, base.final, base.retry_temperature)
