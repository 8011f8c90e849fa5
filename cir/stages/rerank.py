"""``rerank``: a multimodal LLM re-orders the top candidates of a ranking."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from cir.cache import model_revision
from cir.errors import ConfigError, DataError
from cir.generation import (
    Answer,
    AnswerParseError,
    Ask,
    Generator,
    Sampling,
    policy_override,
)
from cir.llm import load_backend
from cir.prompts import FallbackPolicy, ParseError, Prompt, load_prompt
from cir.rerank.grid import compose_grid
from cir.rerank.images import CandidateImages
from cir.rerank.order import ParsedOrder, apply_order, movements, order_by_scores, parse_order
from cir.rerank.yesno import parse_yes_no, yes_probability
from cir.stages._prompted import check_retries, check_sampling, check_variables
from cir.stages.base import Context, Stage, register_stage
from cir.types import QueryState, Ranking

Mode = Literal["listwise", "grid", "verify"]
DEFAULT_MLLM = {"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"}
VLLM_MAX_LOGPROBS = 20  # vLLM's default max_logprobs
DEFAULT_MAX_TOKENS = {"listwise": 1024, "grid": 384, "verify": 4}
VARIABLES = {"listwise": {"modification", "count"}, "grid": {"modification", "count"}}
VARIABLES["verify"] = {"modification"}


@dataclass(frozen=True)
class RerankParams:
    mode: Mode = "listwise"
    top_n: int = 10
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MLLM))
    prompt: str | None = None
    max_image_side: int = 448
    grid_cols: int | None = None
    tile_size: int = 224
    logprobs: int = 20
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    fallback: Literal["fallback", "retry", "raise"] | None = None
    retries: int | None = None
    chunk_size: int = 64

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_p, self.max_tokens or 1, self.chunk_size)
        check_retries(self.retries)
        if self.top_n < 2:
            raise ValueError(f"top_n must be >= 2 (candidates to re-order), got {self.top_n}")
        if self.max_image_side < 28:
            raise ValueError(f"max_image_side must be >= 28 pixels, got {self.max_image_side}")
        if self.tile_size < 48:
            raise ValueError(f"tile_size must be >= 48 pixels, got {self.tile_size}")
        if self.grid_cols is not None and self.grid_cols < 1:
            raise ValueError(f"grid_cols must be >= 1 or null (near-square), got {self.grid_cols}")
        if self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0 (0: read the text only), got {self.logprobs}")


@register_stage
class Rerank(Stage):
    """Re-order each query's top ``top_n`` candidates with a multimodal LLM.

    Modes:
        ``listwise`` (CoTRR): one request per query with the reference image, the modification
        and the candidates in retrieval order, each marked with its number; the model reasons in
        three steps and answers with the numbers best first.
        ``grid`` (SQUARE): the candidates tiled into one image with a number on each tile, sent
        with the reference and the modification in one request; the answer is an ordering of
        the numbers. The grid image is kept in ``data["<instance>_grid"]``.
        ``verify`` (WISER, ImageScope): one yes/no request per (query, candidate); the score is
        P(yes) from the first token's log-probabilities where the backend reports them, else the
        answer text; candidates are re-sorted by it, retrieval order breaking ties.

    Requests of all queries of a batch go to the backend together and are cached by content
    (model, prompt hash, sampling, the exact images sent and the text). Candidates the answer does
    not place keep their retrieval order after the placed ones; ranks after ``top_n`` never move.
    An answer that cannot be read follows the prompt's fallback policy (by default one retry,
    then the query keeps its retrieval order; a verify candidate without a score keeps its
    place), counted in the trace. Images are sent with their longer side at most
    ``max_image_side`` pixels; grid tiles are ``tile_size`` pixels.

    Writes the new ``ranking`` (scores stay with positions, so the ranking stays sorted), the
    model's reasoning to ``reasoning``, and ``data["<instance>"]`` (``data["rerank"]`` unless the
    pipeline names the stage otherwise): mode, model, prompt, the new top order, how each
    candidate moved, raw answers, per-candidate P(yes) (verify), dropped labels and whether the
    query fell back.

    Papers: CoTRR (Wu et al., Chain-of-Thought Re-ranking for Image Retrieval Tasks, 2025);
    SQUARE (Wu, Lin and Yang, SQUARE: Semantic Query-Augmented Fusion and Efficient Batch
    Reranking for Training-free Zero-Shot Composed Image Retrieval, 2025); WISER (Wang et al.,
    2026) and ImageScope (Luo et al., WWW 2025) for yes/no verification.

    Example:
        >>> Rerank(mode="grid", top_n=16, grid_cols=4, tile_size=192,
        ...        llm={"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"})
    """

    name = "rerank"
    Params = RerankParams
    reads = ("query.text", "query.image", "ranking")

    @property
    def writes(self) -> tuple[str, ...]:
        extra = (f"data.{self.instance}_grid",) if self.params.mode == "grid" else ()
        return ("ranking", "reasoning", f"data.{self.instance}", *extra)

    def setup(self, ctx: Context) -> None:
        p = self.params
        self.prompt = load_prompt(p.prompt or p.mode, stage="rerank")
        check_variables(self.prompt, VARIABLES[p.mode], self.instance)
        self.policy = policy_override(self.prompt, p.fallback, p.retries) or self.prompt.fallback
        self._check_vllm_limits()
        self.backend = load_backend(p.llm, ctx.resources)
        self.revision = model_revision(str(p.llm.get("model", "")))

    def _check_vllm_limits(self) -> None:
        """Refuse settings a vLLM engine would reject mid-run (images, log-probabilities)."""
        p = self.params
        if p.llm.get("backend") != "vllm":
            return
        limit = (p.llm.get("limit_mm_per_prompt") or {}).get("image")
        needed = 1 + p.top_n if p.mode == "listwise" else 2
        if limit is not None and limit < needed:
            raise ConfigError(
                f"stage {self.instance!r}: mode {p.mode} with top_n {p.top_n} sends {needed} "
                f"images per request, but the vLLM spec allows {limit}; set "
                f"stages.{self.instance}.llm.limit_mm_per_prompt.image={needed}"
            )
        most = p.llm.get("max_logprobs", VLLM_MAX_LOGPROBS)
        if p.mode == "verify" and p.logprobs > most:
            raise ConfigError(
                f"stage {self.instance!r}: logprobs={p.logprobs}, but vLLM returns at most "
                f"{most} log-probabilities per token; set stages.{self.instance}.logprobs={most}"
            )

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        todo = []
        for state in states:
            if state.ranking is None:
                raise DataError(
                    f"stage {self.instance!r}: query {state.query.id!r} has no ranking; "
                    "put a `retrieve` stage before `rerank`"
                )
            if self._count(state) < 2:
                self.record(state).notes["skipped"] = "fewer than 2 candidates"
            else:
                todo.append(state)
        if todo:
            images = CandidateImages(ctx, self.instance, self.params.max_image_side)
            run_mode = {"listwise": self._listwise, "grid": self._grid, "verify": self._verify}
            run_mode[self.params.mode](todo, ctx, images)
        return states

    # ------------------------------------------------------------------ modes
    def _listwise(self, states: list[QueryState], ctx: Context, images: CandidateImages) -> None:
        def ask(state: QueryState) -> Ask:
            count = self._count(state)
            marked = [images.marked(id_, i + 1) for i, id_ in enumerate(state.ranking.ids[:count])]
            return self._order_ask(state, [images.reference(state), *marked], count)

        self._ordered(states, ctx, ask)

    def _grid(self, states: list[QueryState], ctx: Context, images: CandidateImages) -> None:
        def ask(state: QueryState) -> Ask:
            count = self._count(state)
            tiles = [images.candidate(id_) for id_ in state.ranking.ids[:count]]
            grid, layout = compose_grid(tiles, self.params.grid_cols, self.params.tile_size)
            state.data[f"{self.instance}_grid"] = grid
            self.record(state).notes["grid"] = {"size": list(grid.size), "cols": layout.cols}
            return self._order_ask(state, [images.reference(state), grid], count)

        self._ordered(states, ctx, ask)

    def _verify(self, states: list[QueryState], ctx: Context, images: CandidateImages) -> None:
        pairs = [(s, i) for s in states for i in range(self._count(s))]
        asks = [
            Ask(
                {"modification": s.query.text},
                (images.reference(s), images.candidate(s.ranking.ids[i])),
                record=self.record(s),
                parser=str,
            )
            for s, i in pairs
        ]
        results = iter(self._scores_with_retries(asks, ctx))
        for state in states:
            self._apply_scores(state, [next(results) for _ in range(self._count(state))])

    # ------------------------------------------------------------------ listwise and grid
    def _order_ask(self, state: QueryState, pictures: list[Image.Image], count: int) -> Ask:
        return Ask(
            {"modification": state.query.text, "count": count},
            tuple(pictures),
            fallback=None,
            record=self.record(state),
            parser=_order_parser(count),
        )

    def _ordered(
        self, states: list[QueryState], ctx: Context, make_ask: Callable[[QueryState], Ask]
    ) -> None:
        answers = self._generator(ctx, self.prompt).run([make_ask(state) for state in states])
        for state, answer in zip(states, answers, strict=True):
            self._apply_order(state, answer)

    def _apply_order(self, state: QueryState, answer: Answer) -> None:
        parsed: ParsedOrder | None = answer.value
        count = self._count(state)
        before = state.ranking
        state.ranking = apply_order(before, parsed.order if parsed else (), count)
        state.reasoning.append(answer.texts[0])
        details = {
            "answer": answer.texts[0],
            "dropped": [str(label) for label in parsed.dropped] if parsed else [],
            "duplicates": parsed.duplicates if parsed else 0,
            "placed": len(parsed.order) if parsed else 0,
        }
        self._write(state, before, count, fallback=parsed is None, cached=answer.cached, **details)

    # ------------------------------------------------------------------ verify
    def _scores_with_retries(self, asks: list[Ask], ctx: Context) -> list[_Score]:
        """Score every pair; pairs without a usable score are asked again per the policy."""
        base = self._sampling()
        results = [_score(a) for a in self._generator(ctx, self.prompt, base).run(asks)]
        retries = self.policy.retries if self.policy.policy == "retry" else 0
        for attempt in range(1, retries + 1):
            pending = [i for i, r in enumerate(results) if r.p_yes is None]
            if not pending:
                break
            temperature = base.temperature or self.policy.retry_temperature
            sampling = dataclasses.replace(base, seed=base.seed + attempt, temperature=temperature)
            again = self._generator(ctx, self.prompt, sampling).run([asks[i] for i in pending])
            for i, answer in zip(pending, again, strict=True):
                results[i] = _score(answer)
                notes = asks[i].record.notes
                notes["retries"] = notes.get("retries", 0) + 1
        for ask, result in zip(asks, results, strict=True):
            if result.p_yes is not None:
                continue
            if self.policy.final == "raise":
                raise AnswerParseError(
                    f"stage {self.instance!r}: the answer {result.text[:200]!r} of "
                    f"{self.backend.identity} says neither yes nor no and its first-token "
                    "log-probabilities hold neither; set fallback: fallback to keep the "
                    "retrieval position instead"
                )
            ask.record.fallbacks += 1
        return results

    def _apply_scores(self, state: QueryState, results: list[_Score]) -> None:
        count = self._count(state)
        scores = [r.p_yes for r in results]
        before = state.ranking
        state.ranking = apply_order(before, order_by_scores(scores), count)
        by_id = dict(zip(before.ids[:count], results, strict=True))
        p_yes = {id_: r.p_yes for id_, r in by_id.items()}
        state.reasoning.append(
            "P(yes) per candidate: "
            + ", ".join(f"{id_}={'n/a' if p is None else f'{p:.3f}'}" for id_, p in p_yes.items())
        )
        self._write(
            state,
            before,
            count,
            fallback=any(p is None for p in scores),
            cached=all(r.cached for r in results),
            p_yes=p_yes,
            source={id_: r.source for id_, r in by_id.items()},
            answers={id_: r.text for id_, r in by_id.items()},
        )

    # ------------------------------------------------------------------ shared
    def _count(self, state: QueryState) -> int:
        return min(self.params.top_n, len(state.ranking)) if state.ranking else 0

    def _sampling(self) -> Sampling:
        p = self.params
        return Sampling(
            max_tokens=p.max_tokens or DEFAULT_MAX_TOKENS[p.mode],
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            logprobs=p.logprobs if p.mode == "verify" else 0,
        )

    def _generator(self, ctx: Context, prompt: Prompt, sampling: Sampling | None = None):
        verify = self.params.mode == "verify"
        return Generator(
            self.backend,
            prompt,
            stage=self.name,
            sampling=sampling or self._sampling(),
            cache=ctx.cache,
            fallback=FallbackPolicy("fallback") if verify else self.policy,
            chunk_size=self.params.chunk_size,
            kind="rerank",
            revision=self.revision,
        )

    def _write(self, state: QueryState, before: Ranking, count: int, **details: Any) -> None:
        moves = movements(before, state.ranking, count)
        state.data[self.instance] = {
            "mode": self.params.mode,
            "model": self.backend.identity,
            "prompt": self.prompt.identity,
            "candidates": count,
            "order": list(state.ranking.ids[:count]),
            "moves": moves,
            **details,
        }
        notes = self.record(state).notes
        notes["mode"] = self.params.mode
        notes["moved"] = sum(m["from"] != m["to"] for m in moves)


@dataclass(frozen=True)
class _Score:
    p_yes: float | None
    source: str  # "logprobs", "text" or "none"
    text: str
    cached: bool


def _score(answer: Answer) -> _Score:
    """P(yes) of one verify answer: first-token log-probabilities first, then the text."""
    text = answer.texts[0]
    from_logprobs = yes_probability(answer.logprobs[0]) if answer.logprobs else None
    if from_logprobs is not None:
        return _Score(from_logprobs, "logprobs", text, answer.cached)
    from_text = parse_yes_no(text)
    return _Score(from_text, "text" if from_text is not None else "none", text, answer.cached)


def _order_parser(count: int) -> Callable[[str], ParsedOrder]:
    def parse(text: str) -> ParsedOrder:
        parsed = parse_order(text, count)
        if parsed is None:
            raise ParseError(f"no ordering of the candidate numbers 1..{count} in the answer")
        return parsed

    return parse
