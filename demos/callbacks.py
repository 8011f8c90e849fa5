"""What each control of the demo page does, as plain functions of plain values."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from cir import CirError
from cir.index.ids import printable

from .engine import DemoEngine, Knob, Outcome
from .render import data_images, error_html, result_tiles, trace_html
from .safety import decode_upload, gallery_tile

REFERENCE_SIDE = 512

GENERIC_EDITS = ("the same scene at night", "in black and white", "with a dog in it")


class DemoCallbacks:
    """What each control of the page does, as plain functions (testable without a browser).

    Args:
        engine: the :class:`DemoEngine` holding the index, models and caches.

    Example:
        >>> cb = DemoCallbacks(engine)
        >>> tiles, trace, ids, grid, status = cb.search("clip_fusion", None, "cat.jpg", "at night")
    """

    def __init__(self, engine: DemoEngine) -> None:
        self.engine = engine
        self.index = engine.index

    # ------------------------------------------------------------------ searching
    def search(
        self,
        pipeline: str,
        image_path: str | None,
        reference_id: str | None,
        text: str,
        alpha: float | None = None,
        beta: float | None = None,
        top_k: int | None = None,
        rerank_mode: str | None = None,
        exclude_reference: bool = False,
        progress: Any = None,
    ) -> tuple[list, str, list[str], Any, str]:
        """Run one query: (result tiles, trace HTML, result ids, grid image or None, status)."""
        settings = {"alpha": alpha, "beta": beta, "top_k": top_k, "rerank_mode": rerank_mode}
        outcome = self._run(
            pipeline, image_path, reference_id, text, settings, exclude_reference, progress
        )
        images = data_images(outcome.state)
        grid = images[0][1] if images else None
        return (
            result_tiles(self.index, outcome.state),
            trace_html(outcome),
            _ids(outcome),
            grid,
            self.status(),
        )

    def api_search(
        self,
        pipeline: str,
        image_path: str | None,
        text: str,
        alpha: float | None = None,
        beta: float | None = None,
        top_k: int | None = None,
        rerank_mode: str | None = None,
        exclude_reference: bool = False,
        reference_id: str | None = None,
    ) -> tuple[list, str, list[str], Any, str]:
        """The public API's search: the reference is exactly what the caller sent, an uploaded
        image or a gallery id (both at once is an error)."""
        if image_path and reference_id:
            message = "give a reference image or a gallery reference_id, not both"
            return [], error_html(message), [], None, self.status()
        return self.search(
            pipeline, image_path, reference_id or None, text, alpha, beta, top_k, rerank_mode,
            exclude_reference,
        )  # fmt: skip

    def compare(
        self,
        pipeline_a: str,
        pipeline_b: str,
        image_path: str | None,
        reference_id: str | None,
        text: str,
        top_k: int | None = None,
        exclude_reference: bool = False,
    ) -> tuple[list, str, list, str, str]:
        """Run both pipelines on the same query at once, each with its own defaults."""
        settings = {"top_k": top_k}
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(
                    self._run, name, image_path, reference_id, text, settings, exclude_reference
                )
                for name in (pipeline_a, pipeline_b)
            ]
            a, b = (f.result() for f in futures)
        return (
            result_tiles(self.index, a.state),
            trace_html(a),
            result_tiles(self.index, b.state),
            trace_html(b),
            self.status(),
        )

    def _run(self, pipeline, image_path, reference_id, text, settings, exclude, progress=None):
        try:
            image = None if reference_id or not image_path else decode_upload(image_path)
        except CirError as exc:
            return Outcome(pipeline=pipeline, error=str(exc))
        on_stage = _progress_reporter(progress) if progress is not None else None
        return self.engine.run(
            pipeline,
            text,
            image=image,
            reference_id=reference_id or None,
            settings=settings,
            exclude_reference=exclude,
            on_stage=on_stage,
        )

    # ------------------------------------------------------------------ controls
    def pipeline_changed(self, pipeline: str) -> tuple[str, Any, Any, Any, Any]:
        """The description and the knob controls for the chosen pipeline."""
        try:
            knobs = self.engine.knobs(pipeline)
            description = self.engine.description(pipeline)
        except CirError as exc:
            return error_html(str(exc)), *(gr.update(visible=False) for _ in range(4))
        return (
            description,
            _slider_update(knobs.get("alpha"), 1.0),
            _slider_update(knobs.get("beta"), 2.0),
            _slider_update(knobs.get("top_k"), 100),
            _choice_update(knobs.get("rerank_mode")),
        )

    def pick_reference(self, reference_id: str | None) -> tuple[Any, str | None]:
        """Show gallery image ``reference_id`` as the reference: (picture, reference id)."""
        if not reference_id:
            return None, None
        if not isinstance(reference_id, str) or not self.index.has(reference_id):
            raise gr.Error(f"{reference_id!r} is not an image of this gallery")
        return gallery_tile(self.index, reference_id, REFERENCE_SIDE), reference_id

    def pick_example(self, reference_id: str | None, text: str) -> tuple[Any, str | None]:
        """An example row was clicked: show its reference (its text fills the box itself)."""
        return self.pick_reference(reference_id)

    def use_result(self, result_ids: Sequence[str], position: int) -> tuple:
        """Make the clicked result the new reference: (image file, reference id, dropdown)."""
        if not result_ids or not 0 <= position < len(result_ids):
            return gr.update(), gr.update(), gr.update()
        image, ref = self.pick_reference(result_ids[position])
        return image, ref, ref

    def status(self) -> str:
        s = self.engine.status()
        return (
            f"{s['gallery_images']} gallery images · encoder `{s['encoder']}` · "
            f"models in memory: {s['models_loaded']} · queries answered: "
            f"{s['queries_answered']} (failed: {s['queries_failed']})"
        )

    def examples(self, limit: int = 4) -> list[list[str]]:
        """(gallery id, modification) pairs that work on this gallery, for the examples table."""
        try:
            from cir.sample_gallery import SAMPLE_QUERIES
        except ImportError:
            SAMPLE_QUERIES = []
        ids = [i for i in self.index.ids[:100_000] if printable(i) == i]
        by_name = {Path(i).name: i for i in ids}
        pairs = [[by_name[n], t] for n, t in SAMPLE_QUERIES if n in by_name]
        if not pairs:
            pairs = [[i, t] for i, t in zip(ids, GENERIC_EDITS, strict=False)]
        return pairs[:limit]


# ---------------------------------------------------------------------- helpers
def _progress_reporter(progress):
    def report(position: int, total: int, name: str) -> None:
        progress((position, total), desc=f"stage {position + 1}/{total}: {name}")

    return report


def _ids(outcome: Outcome) -> list[str]:
    state = outcome.state
    return list(state.ranking.ids) if state is not None and state.ranking else []


def _slider_update(knob: Knob | None, default_max: float):
    if knob is None:
        return gr.update(visible=False)
    return gr.update(
        visible=True,
        value=knob.value,
        minimum=knob.low,
        maximum=max(knob.high, float(knob.value)),
        step=knob.step,
        label=knob.label,
    )


def _choice_update(knob: Knob | None):
    if knob is None:
        return gr.update(visible=False, value=None)
    return gr.update(visible=True, choices=list(knob.choices), value=knob.value)
