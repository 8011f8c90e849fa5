"""``fuse_confidence``: rank the union of verified branches by their summed confidences."""

from __future__ import annotations

from dataclasses import dataclass

from cir.errors import DataError
from cir.rerank.confidence import TIE_RULES, fuse_confidences
from cir.stages.base import Context, Port, Stage, register_stage
from cir.types import QueryState, Ranking


@dataclass(frozen=True)
class FuseConfidenceParams:
    branches: tuple[str, ...] = ("verify_text", "verify_image")
    ties: tuple[str, ...] = TIE_RULES
    missing: float = 0.0

    def __post_init__(self) -> None:
        if len(self.branches) < 2:
            raise ValueError("branches must name at least two verify stages to fuse")
        if len(set(self.branches)) != len(self.branches):
            raise ValueError(f"branches names a stage twice: {list(self.branches)}")
        unknown = [t for t in self.ties if t not in TIE_RULES]
        if unknown:
            raise ValueError(f"unknown tie-breaker(s) {unknown}; valid: {', '.join(TIE_RULES)}")


@register_stage
class FuseConfidence(Stage):
    """Fuse several verified branches into one ranking by the verifier's confidences.

    Each branch is a ``rerank`` stage in ``verify`` mode (named in ``branches``) that scored the
    top candidates of one search with P(yes). The fused ranking holds every candidate of any
    branch, scored by the sum of its confidences (``missing``, 0 by default, where a branch did
    not retrieve it); ties are broken by ``ties`` in order: ``max`` (the larger single
    confidence), ``first`` (the first branch's confidence), ``id`` (ascending gallery id). The
    per-branch confidences go to ``data.<instance>``.

    Paper: WISER (Wang et al., WISER: Wider Search, Deeper Thinking, and Adaptive Fusion for
    Training-Free Zero-Shot Composed Image Retrieval, CVPR 2026) fuses its text-to-image and
    image-to-image top-50 lists this way.

    Example:
        >>> FuseConfidence(branches=["verify_text", "verify_image"], ties=["max", "first", "id"])
    """

    name = "fuse_confidence"
    Params = FuseConfidenceParams

    @property
    def inputs(self) -> tuple[Port, ...]:
        return tuple(
            Port(f"data.{b}", "data", "a branch's confidences") for b in self.params.branches
        )

    @property
    def outputs(self) -> tuple[Port, ...]:
        return (
            Port("ranking", "ranking", "the fused ranking"),
            Port(f"data.{self.instance}", "data", "each branch's confidences"),
        )

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        p = self.params
        for state in states:
            branches = [self._confidences(state, b) for b in p.branches]
            fused = fuse_confidences(branches, p.ties, p.missing)
            state.ranking = Ranking(tuple(i for i, _ in fused), tuple(s for _, s in fused))
            state.data[self.instance] = {"branches": dict(zip(p.branches, branches, strict=True))}
            counts = {b: len(c) for b, c in zip(p.branches, branches, strict=True)}
            self.record(state).notes["fused"] = counts
        return states

    def _confidences(self, state: QueryState, branch: str) -> dict[str, float | None]:
        data = state.data.get(branch)
        if data is None:
            return {}  # the verifier skipped the query (fewer than two candidates)
        if not isinstance(data, dict) or not isinstance(data.get("p_yes"), dict):
            raise DataError(
                f"stage {self.instance!r}: query {state.query.id!r} has no confidences from "
                f"{branch!r}; each branch must be a rerank stage with mode: verify"
            )
        return dict(data["p_yes"])
