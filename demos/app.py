"""The cir demo: composed search over a gallery, with every stage's work shown beside the results.

Run it with ``cir demo --index DIR`` (or ``--gallery FOLDER``), or from Python:

    >>> from cir import GalleryIndex
    >>> from demos.app import build_app, launch_app
    >>> app = build_app(GalleryIndex.load("my_index"), pipelines=["clip_fusion", "image_only"])
    >>> launch_app(app)                                    # http://127.0.0.1:7860

The callbacks are the methods of :class:`~demos.callbacks.DemoCallbacks`: plain functions of
plain values, so they are tested without a browser. Models load once per process (shared
resources); each query runs in Gradio's queue with a bounded number of queries at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from cir.index.ids import printable

from . import safety
from .callbacks import DemoCallbacks
from .engine import DemoEngine, Knob
from .safety import MAX_UPLOAD_BYTES

MAX_ID_CHOICES = 2000
_STYLE = """
.cir-summary {font-size: 0.95em; margin-bottom: 0.4em;}
.cir-error {background: #fdecec; border-left: 4px solid #d64545; padding: 0.7em 0.9em;
            border-radius: 6px; color: #6b1d1d;}
.cir-warning {background: #fff6e0; border-left: 4px solid #e0a100; padding: 0.5em 0.9em;
              border-radius: 6px; margin: 0.4em 0;}
.cir-warning ul {margin: 0.2em 0 0 1.2em;}
.cir-table {border-collapse: collapse; font-size: 0.85em; width: 100%;}
.cir-table td, .cir-table th {border: none; border-bottom: 1px solid #e5e7eb; padding: 3px 6px;
                              text-align: left; white-space: nowrap;}
.cir-table td.cir-notes {white-space: normal; word-break: break-word; font-size: 0.9em;
                         font-family: var(--font-mono);}
.cir-scroll {overflow-x: auto; max-width: 100%;}
.cir-up {color: #15803d; font-weight: 600;} .cir-down {color: #b91c1c; font-weight: 600;}
.cir-flag {color: #b45309; font-weight: 600;}
#cir-trace h4 {margin: 0.8em 0 0.2em 0;}
#cir-trace ol, #cir-trace ul {margin-top: 0.1em;}
#cir-status {font-size: 0.8em; opacity: 0.75;}
"""


# ---------------------------------------------------------------------- building the page
def build_app(
    index: Any,
    pipelines: Sequence[str] = ("clip_fusion", "image_only", "text_only"),
    overrides: Sequence[str] = (),
    cache: Any = None,
    device: str | None = None,
    concurrency: int = 2,
    max_queue: int = 32,
    engine: DemoEngine | None = None,
) -> gr.Blocks:
    """The demo page over ``index``.

    Args:
        index: the ``GalleryIndex`` to search (only its images are shown, as copies).
        pipelines: pipeline names or YAML paths offered in the page; the first is the default.
        overrides: ``stages.<stage>.<param>=value`` applied to every pipeline having that stage.
        cache: a ``ContentCache`` (captions, LLM outputs, embeddings), or None.
        device: device for models; automatic when None.
        concurrency: queries that may run at the same time (Gradio's queue bounds the rest).
        max_queue: queries that may wait; beyond that the page asks people to retry.
        engine: an existing :class:`DemoEngine` (then the arguments above except
            ``concurrency``/``max_queue`` are ignored).
    """
    safety.check_gallery_root((engine.index if engine else index).root)
    engine = engine or DemoEngine(index, pipelines, overrides, cache=cache, device=device)
    cb = DemoCallbacks(engine)
    examples = cb.examples()
    first_id, first_text = examples[0] if examples else (None, "")
    first_image, _ = cb.pick_reference(first_id)
    id_choices = _id_choices(engine.index, [e[0] for e in examples])
    default = engine.default_pipeline
    knobs = engine.knobs(default)

    with gr.Blocks(
        title="cir · composed image retrieval",
        analytics_enabled=False,
        fill_width=True,
        **_style_for_blocks(),
    ) as app:
        gr.Markdown(
            "## cir · composed image retrieval\n"
            "Give a reference image and say how the target differs. Each stage's work is shown "
            "beside the results."
        )
        ref_state = gr.State(first_id)
        ids_state = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                image = gr.Image(
                    value=first_image,
                    type="filepath",
                    image_mode=None,
                    label="Reference image",
                    sources=["upload", "clipboard"],
                    height=240,
                    elem_id="cir-reference",
                )
                ref_id = gr.Dropdown(
                    choices=id_choices,
                    value=first_id,
                    label="…or pick it from the gallery",
                    allow_custom_value=len(engine.index) > MAX_ID_CHOICES,
                    filterable=True,
                    elem_id="cir-reference-id",
                )
                text = gr.Textbox(
                    value=first_text,
                    label="Modification",
                    lines=2,
                    max_length=1000,
                    elem_id="cir-text",
                    placeholder="e.g. the same dog, but lying on grass",
                )
                pipeline = gr.Dropdown(
                    engine.pipelines, value=default, label="Pipeline", elem_id="cir-pipeline"
                )
                description = gr.Markdown(engine.description(default))
                with gr.Accordion("Settings", open=False):
                    alpha = gr.Slider(step=0.05, label="α", **_initial(knobs, "alpha", 0, 1))
                    beta = gr.Slider(step=0.05, label="β", **_initial(knobs, "beta", 0, 2))
                    top_k = gr.Slider(
                        step=1,
                        label="Results (top-k)",
                        elem_id="cir-topk",
                        **_initial(knobs, "top_k", 1, 100),
                    )
                    mode = gr.Radio([], label="Re-ranking mode", visible=False)
                    exclude = gr.Checkbox(False, label="Hide the reference from its results")
                search = gr.Button("Search", variant="primary", elem_id="cir-search")
                gr.Examples(
                    examples,
                    inputs=[ref_id, text],
                    fn=cb.pick_example,
                    outputs=[image, ref_state],
                    run_on_click=True,
                    label="Examples",
                    example_labels=[f"{Path(i).stem}: {t}" for i, t in examples],
                )
            with gr.Column(scale=9), gr.Tabs():
                with gr.Tab("Results"), gr.Row(equal_height=False):
                    with gr.Column(scale=5):
                        results = gr.Gallery(
                            label="Results (click one to search from it)",
                            columns=3,
                            height=600,
                            object_fit="cover",
                            allow_preview=False,
                            elem_id="cir-results",
                        )
                    with gr.Column(scale=4):
                        trace = gr.HTML(
                            "<i>The trace of each stage appears here.</i>",
                            elem_id="cir-trace",
                        )
                        grid = gr.Image(
                            label="Re-ranker's numbered grid",
                            visible=False,
                            interactive=False,
                            height=240,
                        )
                with gr.Tab("Compare pipelines"):
                    others = [p for p in engine.pipelines if p != default] or [default]
                    with gr.Row():
                        pipe_a = gr.Dropdown(engine.pipelines, value=default, label="Left")
                        pipe_b = gr.Dropdown(engine.pipelines, value=others[0], label="Right")
                        compare = gr.Button("Compare", variant="primary", elem_id="cir-compare")
                    with gr.Row(equal_height=False):
                        with gr.Column():
                            results_a = gr.Gallery(
                                columns=3,
                                height=420,
                                allow_preview=False,
                                label="Left",
                                elem_id="cir-results-a",
                            )
                            trace_a = gr.HTML(elem_id="cir-trace-a")
                        with gr.Column():
                            results_b = gr.Gallery(
                                columns=3,
                                height=420,
                                allow_preview=False,
                                label="Right",
                                elem_id="cir-results-b",
                            )
                            trace_b = gr.HTML(elem_id="cir-trace-b")
        status = gr.Markdown(cb.status(), elem_id="cir-status")

        knob_outputs = [description, alpha, beta, top_k, mode]
        internal = {"queue": False, **_not_in_api()}
        pipeline.change(cb.pipeline_changed, pipeline, knob_outputs, **internal)
        app.load(cb.pipeline_changed, pipeline, knob_outputs, **internal)
        ref_id.input(cb.pick_reference, ref_id, [image, ref_state], **internal)
        image.upload(_forget_reference, None, [ref_state, ref_id], **internal)
        image.clear(_forget_reference, None, [ref_state, ref_id], **internal)
        results.select(_on_result_click(cb), ids_state, [image, ref_state, ref_id], **internal)
        search.click(
            _with_progress(cb),
            [pipeline, image, ref_state, text, alpha, beta, top_k, mode, exclude],
            [results, trace, ids_state, grid, status],
            api_name="page_search",
            **_not_in_api(),
        )
        _public_search(cb, [pipeline, text, alpha, beta, top_k, mode, exclude],
                       [results, trace, ids_state, grid, status])  # fmt: skip
        compare.click(
            cb.compare,
            [pipe_a, pipe_b, image, ref_state, text, top_k, exclude],
            [results_a, trace_a, results_b, trace_b, status],
            api_name="compare",
        )
        status_button = gr.Button(visible=False)
        status_button.click(cb.status, None, status, api_name="status", queue=False)
    app.queue(default_concurrency_limit=max(1, concurrency), max_size=max_queue)
    app.cir_engine = engine
    return app


def launch_app(
    app: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    block: bool = True,
    quiet: bool = False,
    allowed_hosts: Sequence[str] = (),
):
    """Serve ``app`` (local only unless ``share``).

    No folder of the disk is readable through the page: gallery images reach it only as copies
    the demo makes of indexed images. Requests naming another host than this machine's names
    (or ``allowed_hosts``; ``*`` allows any) are refused, which stops DNS-rebinding pages.
    """
    hosts = safety.allowed_hosts(host, share, allowed_hosts)
    return app.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[],
        app_kwargs={"middleware": [Middleware(safety.HostCheck, allowed=hosts)]},
        max_file_size=max_upload_bytes,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=quiet,
        ssr_mode=False,
        **_style_for_launch(),
    )


# ---------------------------------------------------------------------- small helpers
def _with_progress(cb: DemoCallbacks):
    """The search callback as Gradio wants it: a progress tracker, the grid shown when present."""

    def search(
        pipeline,
        image,
        ref_state,
        text,
        alpha,
        beta,
        top_k,
        mode,
        exclude,
        progress=gr.Progress(),  # noqa: B008 (Gradio injects the tracker through this default)
    ):
        tiles, trace, ids, grid, status = cb.search(
            pipeline, image, ref_state, text, alpha, beta, top_k, mode, exclude, progress
        )
        return tiles, trace, ids, gr.update(value=grid, visible=grid is not None), status

    return search


def _public_search(cb: DemoCallbacks, controls: list, outputs: list) -> None:
    """The page's public ``/search`` API: the reference is the uploaded ``image`` or the gallery
    ``reference_id`` the caller sends, never what the page happens to show."""
    image = gr.Image(type="filepath", visible=False, label="image")
    reference_id = gr.Textbox("", visible=False, label="reference_id")
    pipeline, text, alpha, beta, top_k, mode, exclude = controls

    def search(pipeline, image, text, alpha, beta, top_k, mode, exclude, reference_id):
        tiles, trace, ids, grid, status = cb.api_search(
            pipeline, image, text, alpha, beta, top_k, mode, exclude, reference_id
        )
        return tiles, trace, ids, gr.update(value=grid, visible=grid is not None), status

    gr.Button(visible=False).click(
        search,
        [pipeline, image, text, alpha, beta, top_k, mode, exclude, reference_id],
        outputs,
        api_name="search",
    )


def _forget_reference() -> tuple[None, None]:
    """A new upload (or clearing the image) replaces the gallery reference."""
    return None, None


def _not_in_api() -> dict[str, Any]:
    """Keep the page's own plumbing out of the public API (Gradio 6 and earlier spellings)."""
    return {"api_visibility": "private"} if _gradio_major() >= 6 else {"show_api": False}


def _on_result_click(cb: DemoCallbacks):
    def on_click(result_ids: list[str], evt: gr.SelectData):
        return cb.use_result(result_ids, evt.index)

    return on_click


def _id_choices(index: Any, must_have: Sequence[str]) -> list[str]:
    """Ids offered in the dropdown (those a browser can send back: valid UTF-8 text)."""
    ids = [i for i in index.ids[:MAX_ID_CHOICES] if printable(i) == i]
    return ids + [i for i in must_have if i not in set(ids)]


def _initial(knobs: dict[str, Knob], key: str, low: float, high: float) -> dict[str, Any]:
    """A knob's slider as the default pipeline sets it (hidden when it has no such knob)."""
    knob = knobs.get(key)
    if knob is None:
        return {"minimum": low, "maximum": high, "visible": False}
    top = max(knob.high, float(knob.value))
    return {"minimum": knob.low, "maximum": top, "value": knob.value}


def _gradio_major() -> int:
    return int(gr.__version__.split(".")[0])


def _style_for_blocks() -> dict[str, Any]:
    """Gradio before 6 takes the theme and CSS in ``Blocks``; 6 and later in ``launch``."""
    return {} if _gradio_major() >= 6 else _style()


def _style_for_launch() -> dict[str, Any]:
    return _style() if _gradio_major() >= 6 else {}


def _style() -> dict[str, Any]:
    return {"css": _STYLE, "theme": gr.themes.Soft(primary_hue="indigo")}


__all__ = ["DemoCallbacks", "DemoEngine", "build_app", "launch_app"]
