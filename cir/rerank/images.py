"""The images a re-ranker shows: the reference and gallery candidates, bounded and numbered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PIL import Image

from cir.errors import DataError
from cir.images import load_image
from cir.llm.images import bound_size
from cir.rerank.grid import draw_label, label_scale
from cir.state import resolve_reference
from cir.types import QueryState

if TYPE_CHECKING:
    from cir.context import Context


class CandidateImages:
    """Reference and candidate images of one run, decoded once each and bounded in size.

    Args:
        ctx: the run's context (its index gives candidate files by gallery id).
        stage: the stage instance name, for error messages.
        max_side: longest side of every image handed out, in pixels.

    Example:
        >>> images = CandidateImages(ctx, "rerank", max_side=448)
        >>> images.marked("img_0042", 3)  # the candidate with a "3" badge in its corner
    """

    def __init__(self, ctx: Context, stage: str, max_side: int) -> None:
        self.ctx, self.stage, self.max_side = ctx, stage, max_side
        self._memo: dict[Any, Image.Image] = {}

    def reference(self, state: QueryState) -> Image.Image:
        source = resolve_reference(state, self.ctx, self.stage)
        return self._bounded(source)

    def candidate(self, id_: str) -> Image.Image:
        index = self.ctx.require_index(self.stage)
        path = index.path(id_) if index.has(id_) else None
        if path is None:
            raise DataError(
                f"stage {self.stage!r}: gallery id {id_!r} has no image file in the index; "
                "re-ranking shows the gallery images to the model, so build the index from an "
                "image folder (or with paths=...)"
            )
        return self._bounded(path)

    def marked(self, id_: str, label: int) -> Image.Image:
        """The candidate with its number drawn in its top-left corner."""
        key = ("marked", id_, label)
        if key not in self._memo:
            image = self.candidate(id_).copy()
            draw_label(image, label, (0, 0), label_scale(min(image.size)))
            self._memo[key] = image
        return self._memo[key]

    def _bounded(self, source: Any) -> Image.Image:
        key = source if not isinstance(source, Image.Image) else id(source)
        if key not in self._memo:
            self._memo[key] = bound_size(load_image(source), self.max_side)
        return self._memo[key]
