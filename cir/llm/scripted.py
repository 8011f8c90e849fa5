"""A scripted language backend for tests and documentation: answers come from a script, not a model.

It speaks the same protocol as the real backends, so a pipeline, a stage or a user's own test can
run with predictable answers and count how often a model was asked (``.calls``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cir.errors import BackendError, ConfigError
from cir.llm.base import ChatRequest, Generation, check_batch, cut_at_stop
from cir.resources import Resources

Answer = str | Sequence[str]
AnswerFn = Callable[[ChatRequest], Answer]
LogprobFn = Callable[[ChatRequest, str], Mapping[str, float]]


class ScriptedLLM:
    """A backend that answers from a script and records every request it receives.

    For each sample of each request the answer is chosen by the first rule that applies:

    1. ``fn(request)``: a callable returning one string, or a list with one string per sample;
    2. ``by_substring``: the value of the first key (in insertion order) that occurs in the
       request's text (all messages); a list value gives one answer per sample, cycling;
    3. ``responses``: the next answer of the list, shared across requests in arrival order.
       When the list is used up it starts again (``when_exhausted="cycle"``, the default) or
       raises :class:`~cir.errors.BackendError` (``"error"``);
    4. ``echo=True``: the last user message's text;
    5. ``default``: a fixed answer.

    Nothing applying is a :class:`~cir.errors.BackendError` naming the prompt. When a request
    asks for ``logprobs=k``, each sample gets ``logprobs`` (a dict, or a callable of the request
    and the answer) trimmed to its k best entries; without it, the answer's first word gets
    log-probability 0.0 (certainty), which is what a yes/no verifier test needs. A request's
    ``stop`` sequences cut each answer as a model server would.

    Args:
        responses: answers handed out in order.
        by_substring: prompt substring -> answer (or answers).
        fn: callable deciding the answer from the request.
        echo: answer with the last user message.
        default: the answer when no other rule applies.
        when_exhausted: ``"cycle"`` or ``"error"`` once ``responses`` is used up.
        logprobs: first-token log-probabilities to report when asked.
        name: shown in ``identity`` (``scripted:<name>``), so cache keys differ per script.

    Attributes:
        calls: every request received, in order (one entry per request, not per batch).
        batch_sizes: the size of every ``generate`` batch.

    Example:
        >>> llm = ScriptedLLM(by_substring={"red": "a red dress"}, default="a dress")
        >>> llm.generate([ChatRequest.from_prompt("make it red")])[0].text
        'a red dress'
        >>> len(llm.calls)
        1
    """

    def __init__(
        self,
        responses: Sequence[str] | None = None,
        *,
        by_substring: Mapping[str, Answer] | None = None,
        fn: AnswerFn | None = None,
        echo: bool = False,
        default: str | None = None,
        when_exhausted: Literal["cycle", "error"] = "cycle",
        logprobs: Mapping[str, float] | LogprobFn | None = None,
        name: str = "scripted",
    ) -> None:
        if when_exhausted not in ("cycle", "error"):
            raise ConfigError(f"when_exhausted must be 'cycle' or 'error', got {when_exhausted!r}")
        if isinstance(responses, str):
            raise ConfigError("responses must be a list of strings, not one string")
        if not (responses or by_substring or fn or echo or default is not None):
            raise ConfigError(
                "ScriptedLLM needs something to answer with: responses, by_substring, fn, "
                "echo=True or default"
            )
        self.responses = list(responses or [])
        self.by_substring = dict(by_substring or {})
        self.fn = fn
        self.echo = echo
        self.default = default
        self.when_exhausted = when_exhausted
        self.logprobs = logprobs
        self.identity = f"scripted:{name}"
        self.calls: list[ChatRequest] = []
        self.batch_sizes: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ScriptedLLM(identity={self.identity!r}, calls={len(self.calls)})"

    def reset(self) -> None:
        """Forget recorded calls and start the ``responses`` list from the top."""
        with self._lock:
            self.calls.clear()
            self.batch_sizes.clear()
            self._next = 0

    def generate(self, requests: list[ChatRequest]) -> list[Generation]:
        """Answer each request (``n`` samples each), recording it in ``calls``."""
        requests = check_batch("ScriptedLLM", requests)
        with self._lock:
            self.batch_sizes.append(len(requests))
            self.calls.extend(requests)
            return [self._answer(req) for req in requests]

    def _answer(self, req: ChatRequest) -> Generation:
        texts = [cut_at_stop(self._sample(req, i), req.stop) for i in range(req.n)]
        logprobs = [self._first_token_logprobs(req, t) for t in texts] if req.logprobs else None
        return Generation(
            texts=texts,
            first_token_logprobs=logprobs,
            prompt_tokens=len(req.prompt_text.split()),
            completion_tokens=sum(len(t.split()) for t in texts),
        )

    def _sample(self, req: ChatRequest, i: int) -> str:
        if self.fn is not None:
            return _pick(self.fn(req), i)
        text = req.prompt_text
        for key, answer in self.by_substring.items():
            if key in text:
                return _pick(answer, i)
        if self.responses:
            return self._next_response()
        if self.echo:
            users = [m.content for m in req.messages if m.role == "user"]
            return users[-1] if users else text
        if self.default is not None:
            return self.default
        raise BackendError(f"ScriptedLLM has no answer for the prompt {_short(text)!r}")

    def _next_response(self) -> str:
        if self._next >= len(self.responses):
            if self.when_exhausted == "error":
                raise BackendError(
                    f"ScriptedLLM used up its {len(self.responses)} scripted responses; "
                    "give more, or when_exhausted='cycle'"
                )
            self._next = 0
        answer = self.responses[self._next]
        self._next += 1
        return answer

    def _first_token_logprobs(self, req: ChatRequest, text: str) -> dict[str, float]:
        if self.logprobs is None:
            first = text.split()[0] if text.split() else text
            return {first: 0.0}
        scores = self.logprobs(req, text) if callable(self.logprobs) else self.logprobs
        best = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        return dict(itertools.islice(best, req.logprobs))


def _pick(answer: Answer, i: int) -> str:
    if isinstance(answer, str):
        return answer
    answers = list(answer)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise BackendError(f"a scripted answer must be a string or non-empty list, not {answer!r}")
    return answers[i % len(answers)]


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Options:
    """Spec options of ``{"backend": "scripted", ...}`` (JSON values only; no callables)."""

    responses: list[str] | None = None
    by_substring: dict[str, str | list[str]] | None = None
    echo: bool = False
    default: str | None = None
    when_exhausted: Literal["cycle", "error"] = "cycle"
    logprobs: dict[str, float] | None = None
    name: str = "scripted"
    model: str | None = None  # accepted so specs can be switched between backends; unused


def build(options: Options, resources: Resources | None = None) -> ScriptedLLM:
    """The backend for a validated spec."""
    return ScriptedLLM(
        options.responses,
        by_substring=options.by_substring,
        echo=options.echo,
        default=options.default,
        when_exhausted=options.when_exhausted,
        logprobs=options.logprobs,
        name=_name(options),
    )


def identity(options: Options) -> str:
    """The identity a scripted backend built from ``options`` reports."""
    return f"scripted:{_name(options)}"


def _name(options: Options) -> str:
    return options.name if options.model is None else f"{options.name}:{options.model}"
