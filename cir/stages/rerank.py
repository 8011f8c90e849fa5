"""``rerank``: a multimodal LLM re-orders the top candidates of a ranking."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from cir.cache import model_revision
from cir.errors import ConfigError, DataError
from cir.generation import Answer, Ask, Generator, policy_override, reads_logprobs
from cir.llm import Sampling, load_backend
from cir.prompts import ParseError, load_prompt
from cir.rerank.grid import compose_grid
from cir.rerank.images import CandidateImages
from cir.rerank.order import ParsedOrder, apply_order, movements, order_by_scores, parse_order
from cir.rerank.subset import SUBSET_RANKING, reorder, set_members
from cir.rerank.yesno import parse_yes_no, yes_probability
from cir.stages._prompted import GenerationParams, check_variables
from cir.stages.base import Context, Port, Stage, register_stage
from cir.types import QueryState, Ranking

Mode = Literal["listwise", "grid", "verify"]
Layout = Literal["marked", "labelled"]
DEFAULT_MLLM = {"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"}
VLLM_MAX_LOGPROBS = 20  # vLLM's default max_logprobs
DEFAULT_MAX_TOKENS = {"listwise": 1024, "grid": 384, "verify": 4}
VARIABLES = {"listwise": {"modification", "count"}, "grid": {"modification", "count"}}
VARIABLES["verify"] = {"modification"}
LABEL_REFERENCE, LABEL_CANDIDATES, LABEL_CANDIDATE = (
    "Reference image:",
    "Candidate images:",
    "Image {}:",
)


@dataclass(frozen=True)
class RerankParams(GenerationParams):
    mode: Mode = "listwise"
    top_n: int = 10
    llm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MLLM))
    prompt: str | None = None
    max_image_side: int | None = 448
    layout: Layout = "marked"
    json_mode: bool = False
    subset_members: str | None = None
    grid_cols: int | None = None
    tile_size: int = 224
    logprobs: int = 20
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_n < 2:
            raise ValueError(f"top_n must be >= 2 (candidates to re-order), got {self.top_n}")
        if self.max_image_side is not None and self.max_image_side < 28:
            raise ValueError(
                "max_image_side must be >= 28 pixels or null (full size), "
                f"got {self.max_image_side}"
            )
        if self.subset_members is not None and self.mode != "listwise":
            raise ValueError(f"subset_members needs mode listwise, got mode {self.mode!r}")
        if self.tile_size < 48:
            raise ValueError(f"tile_size must be >= 48 pixels, got {self.tile_size}")
        if self.grid_cols is not None and self.grid_cols < 1:
            raise ValueError(f"grid_cols must be >= 1 or null (near-square), got {self.grid_cols}")
        if self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0 (0: read the text only), got {self.logprobs}")

    @property
    def sampling(self) -> Sampling:
        """The decoding settings; ``max_tokens`` defaults per mode."""
        base = super().sampling
        if self.max_tokens is not None:
            return base
        return dataclasses.replace(base, max_tokens=DEFAULT_MAX_TOKENS[self.mode])


@register_stage
class Rerank(Stage):
    """Re-order each query's top ``top_n`` candidates with a multimodal LLM.

    Modes:
        ``listwise`` (CoTRR): one request per query with the reference image, the modification
        and the candidates in retrieval order, each marked with its number; the model reasons in
        three steps and answers with the numbers best first. ``layout: labelled`` writes the
        numbers as text instead, interleaved with the images as CoTRR sends them: the prompt,
        "Reference image:", the reference, "Candidate images:", then "Image i:" before each
        candidate (``max_image_side: null`` sends them at full size). ``subset_members: <key>``
        also orders the query's set members listed in ``query.extras[key]`` (CIRR:
        ``group_members``, the reference left out) in a request of their own and writes that
        order to ``data["subset_ranking"]``, which ``cir bench run`` scores as the subset
        ranking (CoTRR's protocol for CIRR's Recall_subset).
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
    inputs = (
        Port("query.text", "text", "the modification"),
        Port("query.image", "image", "the reference image"),
        Port("ranking", "ranking", "the candidates, best first"),
    )
    language_models = ("llm",)
    held = ("backend",)

    @property
    def outputs(self) -> tuple[Port, ...]:
        ports = [
            Port("ranking", "ranking", "the re-ordered ranking"),
            Port("reasoning", "texts", "the model's reasoning"),
            Port(f"data.{self.instance}", "data", "moves, answers, scores"),
        ]
        if self.params.mode == "grid":
            ports.append(Port(f"data.{self.instance}_grid", "data", "the grid image"))
        if self.params.subset_members:
            ports.append(Port(f"data.{SUBSET_RANKING}", "data", "the set members, best first"))
        return tuple(ports)

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
        key = self.params.subset_members
        members = [set_members(state, key, self.instance) for state in states] if key else []

        def ask(state: QueryState) -> Ask:
            return self._listwise_ask(state, state.ranking.ids[: self._count(state)], images)

        self._ordered(states, ctx, ask)
        if key:  # members were put in the order of the ranking before it was re-ranked
            self._rerank_members(states, members, ctx, images)

    def _listwise_ask(self, state: QueryState, ids: Sequence[str], images: CandidateImages) -> Ask:
        """The candidates numbered 1..len(ids): drawn on the images (``marked``) or as a text
        label before each image (``labelled``: "Reference image:", "Image 1:", ...)."""
        if self.params.layout == "labelled":
            pictures = [images.candidate(id_) for id_ in ids]
            labels = [LABEL_REFERENCE, *(LABEL_CANDIDATE.format(i + 1) for i in range(len(ids)))]
            labels[1] = f"{LABEL_CANDIDATES}\n{labels[1]}"
        else:
            pictures = [images.marked(id_, i + 1) for i, id_ in enumerate(ids)]
            labels = []
        return self._order_ask(state, [images.reference(state), *pictures], len(ids), labels)

    def _rerank_members(
        self,
        states: list[QueryState],
        members: list[list[str]],
        ctx: Context,
        images: CandidateImages,
    ) -> None:
        """Order each query's set members (other than the reference) in a request of their own:
        the benchmark's subset ranking (``state.data[SUBSET_RANKING]``)."""
        todo = [(s, ids) for s, ids in zip(states, members, strict=True) if len(ids) >= 2]
        asks = [self._listwise_ask(state, ids, images) for state, ids in todo]
        answers = self._generator(ctx).run(asks)
        for (state, ids), answer in zip(todo, answers, strict=True):
            parsed: ParsedOrder | None = answer.value
            state.data[SUBSET_RANKING] = reorder(ids, parsed.order if parsed else ())
            state.data[self.instance]["subset"] = {
                "members": list(ids),
                "order": state.data[SUBSET_RANKING],
                "answer": answer.texts[0],
                "fallback": parsed is None,
            }
        for state, ids in zip(states, members, strict=True):
            state.data.setdefault(SUBSET_RANKING, list(ids))

    def _grid(self, states: list[QueryState], ctx: Context, images: CandidateImages) -> None:
        def ask(state: QueryState) -> Ask:
            count = self._count(state)
            tiles = [images.candidate(id_) for id_ in state.ranking.ids[:count]]
            grid, layout = compose_grid(tiles, self.params.grid_cols, self.params.tile_size)
            if ctx.keep_artifacts:
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
                parser=_verdict,
            )
            for s, i in pairs
        ]
        answers = iter(self._generator(ctx, logprobs=self.params.logprobs).run(asks))
        for state in states:
            self._apply_scores(state, [_score(next(answers)) for _ in range(self._count(state))])

    # ------------------------------------------------------------------ listwise and grid
    def _order_ask(
        self,
        state: QueryState,
        pictures: list[Image.Image],
        count: int,
        labels: Sequence[str] = (),
    ) -> Ask:
        return Ask(
            {"modification": state.query.text, "count": count},
            tuple(pictures),
            fallback=None,
            record=self.record(state),
            parser=_order_parser(count),
            labels=tuple(labels),
        )

    def _ordered(
        self, states: list[QueryState], ctx: Context, make_ask: Callable[[QueryState], Ask]
    ) -> None:
        answers = self._generator(ctx).run([make_ask(state) for state in states])
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

    def _generator(self, ctx: Context, logprobs: int = 0) -> Generator:
        return Generator(
            self.backend,
            self.prompt,
            stage=self.name,
            sampling=self.params.sampling,
            json_mode=self.params.json_mode,
            logprobs=logprobs,
            cache=ctx.cache,
            fallback=self.policy,
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


@reads_logprobs
def _verdict(text: str, logprobs: dict[str, float] | None) -> tuple[float, str]:
    """P(yes) of one verify answer and where it came from: log-probabilities, then the text."""
    from_logprobs = yes_probability(logprobs) if logprobs else None
    if from_logprobs is not None:
        return from_logprobs, "logprobs"
    from_text = parse_yes_no(text)
    if from_text is None:
        raise ParseError("the answer says neither yes nor no, and its log-probabilities neither")
    return from_text, "text"


def _score(answer: Answer) -> _Score:
    value = answer.value
    p_yes, source = value if value is not None else (None, "none")
    return _Score(p_yes, source, answer.texts[0], answer.cached)


def _order_parser(count: int) -> Callable[[str], ParsedOrder]:
    def parse(text: str) -> ParsedOrder:
        parsed = parse_order(text, count)
        if parsed is None:
            raise ParseError(f"no ordering of the candidate numbers 1..{count} in the answer")
        return parsed

    return parse
