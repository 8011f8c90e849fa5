"""What the demo does, without any user interface: run a pipeline for one query and report.

The engine holds the gallery index, the shared model cache and the content cache for the whole
process, so models load once and every browser session reuses them. Each request builds its own
:class:`~cir.Pipeline` from YAML (cheap: models come from the shared cache), so concurrent users
never share mutable stage objects.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cir import CirError, ConfigError, DataError, Query, QueryState, load_pipeline
from cir.context import Context
from cir.pipeline import apply_overrides, parse_override, pipeline_path
from cir.pipeline_file import KNOB_KEYS
from cir.pipeline_file import Knob as DeclaredKnob
from cir.resources import Resources, default_resources

from .safety import redact_secrets

log = logging.getLogger("cir.demo")

MAX_TEXT_CHARS = 1000
StageCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Knob:
    """A control the page shows for one pipeline: the declared knob and its current value.

    Attributes:
        key: ``alpha``, ``beta``, ``top_k`` or ``rerank_mode`` (the page's control).
        label: what the pipeline calls it.
        targets: the parameters the value is written to (one value may feed several).
        value: the pipeline's own value (of the first target).
        low / high / step: a slider's range; ``choices``: a choice control's values.
    """

    key: str
    label: str
    targets: tuple[str, ...]
    value: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()


@dataclass
class Outcome:
    """The result of one run: the query's state, or the message explaining why there is none."""

    pipeline: str
    state: QueryState | None = None
    error: str | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state is not None


class DemoEngine:
    """Runs composed queries over one gallery index for any number of concurrent users.

    Args:
        index: the ``GalleryIndex`` to search.
        pipelines: pipeline names or YAML paths offered on the page (the first is the default).
            Only these can run: the page never loads a pipeline from a browser-supplied path.
        overrides: ``stages.<stage>.<param>=value`` strings applied to every offered pipeline
            that has that stage (each must apply to at least one).
        cache: a ``ContentCache`` for captions, LLM outputs and embeddings, or None.
        resources: the shared model cache (default: the process-wide one).
        device: device for models; automatic when None.

    Example:
        >>> engine = DemoEngine(GalleryIndex.load("my_index"), ["clip_fusion", "image_only"])
        >>> out = engine.run("clip_fusion", "in red", reference_id="dress_01.jpg")
        >>> out.state.ranking.ids[:3]
    """

    def __init__(
        self,
        index: Any,
        pipelines: Sequence[str] = ("clip_fusion",),
        overrides: Iterable[str] = (),
        cache: Any = None,
        resources: Resources | None = None,
        device: str | None = None,
    ) -> None:
        if not pipelines:
            raise ConfigError("the demo needs at least one pipeline (a shipped name or YAML path)")
        self.index = index
        self.cache = cache
        self.resources = resources or default_resources
        self.device = device
        self._specs = {_label(p): str(pipeline_path(p)) for p in pipelines}
        self._overrides = _assign_overrides(self._specs, [parse_override(o) for o in overrides])
        loaded = {name: self.load(name) for name in self._specs}  # validates every pipeline
        self._descriptions = {name: pipe.description for name, pipe in loaded.items()}
        self._declared = {name: declared_knobs(pipe) for name, pipe in loaded.items()}
        self._knobs = {
            name: page_knobs(pipe, self._declared[name]) for name, pipe in loaded.items()
        }
        self._lock = threading.Lock()
        self.answered = 0
        self.failed = 0

    # ------------------------------------------------------------------ pipelines
    @property
    def pipelines(self) -> list[str]:
        """The names offered on the page, default first."""
        return list(self._specs)

    @property
    def default_pipeline(self) -> str:
        return self.pipelines[0]

    def description(self, name: str) -> str:
        return self._descriptions[self._check_name(name)].strip()

    def load(self, name: str, settings: Mapping[str, Any] | None = None):
        """The pipeline ``name`` with the operator's overrides and the page's ``settings``."""
        name = self._check_name(name)
        overrides = dict(self._overrides[name])
        overrides.update(settings or {})
        return load_pipeline(self._specs[name], overrides)

    def knobs(self, name: str) -> dict[str, Knob]:
        """The main parameters of pipeline ``name`` that the page offers, by knob key."""
        return dict(self._knobs[self._check_name(name)])

    def warm_up(self, name: str | None = None) -> float:
        """Load the models of pipeline ``name`` (default: the default one); returns seconds."""
        started = time.perf_counter()
        pipe = self.load(name or self.default_pipeline)
        pipe.setup(Context(self.index, self.resources, self.cache, self.device, False))
        return time.perf_counter() - started

    # ------------------------------------------------------------------ running
    def run(
        self,
        pipeline: str,
        text: str,
        image: Image.Image | None = None,
        reference_id: str | None = None,
        settings: Mapping[str, Any] | None = None,
        exclude_reference: bool = False,
        on_stage: StageCallback | None = None,
    ) -> Outcome:
        """Run one query; errors come back as ``Outcome.error`` (a message), never raised.

        Args:
            pipeline: one of :attr:`pipelines`.
            text: the modification text.
            image: an uploaded reference image (already decoded), or None.
            reference_id: a gallery id to use as the reference when no image is given.
            settings: knob values by knob key (``alpha``, ``beta``, ``top_k``, ``rerank_mode``).
            exclude_reference: drop the gallery reference from its own results.
            on_stage: called as ``on_stage(i, n, stage_name)`` before each stage runs.
        """
        outcome = Outcome(pipeline=pipeline)
        started = time.perf_counter()
        try:
            self._run(
                outcome, text, image, reference_id, settings or {}, exclude_reference, on_stage
            )
        except CirError as exc:
            outcome.error = redact_secrets(str(exc))
        except Exception as exc:  # a bug or an unexpected backend failure: keep the app up
            outcome.error = redact_secrets(f"the pipeline failed: {type(exc).__name__}: {exc}")
            log.error("query failed:\n%s", redact_secrets("".join(traceback.format_exception(exc))))
        outcome.seconds = time.perf_counter() - started
        with self._lock:
            self.answered += outcome.ok
            self.failed += not outcome.ok
        return outcome

    def _run(self, outcome, text, image, reference_id, settings, exclude_reference, on_stage):
        name = self._check_name(outcome.pipeline)
        overrides = self._settings_to_overrides(name, settings)
        pipe = self.load(name, overrides)
        query = self._query(pipe, text, image, reference_id)
        retrieves = [s.instance for s in pipe.stages if s.name == "retrieve"]
        if exclude_reference and query.reference_id and retrieves:
            flags = {f"stages.{r}.exclude_reference": True for r in retrieves}
            pipe = self.load(name, {**overrides, **flags})
        outcome.settings = overrides
        outcome.resolved = pipe.to_dict()
        states = pipe.run(
            [query],
            self.index,
            batch_size=1,
            cache=self.cache,
            resources=self.resources,
            device=self.device,
            progress=False,
            on_stage=on_stage,
            keep_models=True,
        )
        outcome.state = states[0]

    def _query(self, pipe, text: str, image, reference_id: str | None) -> Query:
        text = (text or "").strip()
        reads = {f for stage in pipe.stages for f in stage.reads}
        if len(text) > MAX_TEXT_CHARS:
            raise DataError(
                f"the modification text is {len(text)} characters; keep it under {MAX_TEXT_CHARS}"
            )
        if "query.text" in reads and not text:
            raise DataError("type how the target should differ from the reference image")
        if image is None and reference_id:
            if not self.index.has(reference_id):
                raise DataError(
                    f"{reference_id!r} is not an image of this gallery; pick one from the list"
                )
        elif image is None and "query.image" in reads:
            raise DataError("upload a reference image or pick one from the gallery")
        ref_id = reference_id if image is None else None
        return Query(text, reference=image, reference_id=ref_id or None, id="demo")

    def _settings_to_overrides(self, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        knobs = self._declared[name]
        unknown = sorted(set(settings) - set(KNOB_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(KNOB_KEYS)}"
            )
        out: dict[str, Any] = {}
        for key, value in settings.items():
            knob = knobs.get(key)
            if knob is None or value is None:
                continue  # the pipeline has no such knob: the page shows it disabled
            out.update(knob.overrides(value))
        return out

    def _check_name(self, name: str) -> str:
        if name not in self._specs:
            raise ConfigError(
                f"unknown pipeline {name!r}; this demo offers: {', '.join(self._specs)}"
            )
        return name

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """Counters for the page's footer and for benchmarks (models are loaded once)."""
        return {
            "models_loaded": len(self.resources.keys()),
            "queries_answered": self.answered,
            "queries_failed": self.failed,
            "gallery_images": len(self.index),
            "encoder": self.index.encoder.key if self.index.encoder else None,
        }


# ---------------------------------------------------------------------- knobs
def declared_knobs(pipe: Any) -> dict[str, DeclaredKnob]:
    """The knobs a pipeline declares (its ``knobs:`` section); the number of results is offered
    for the last ``retrieve`` stage when the pipeline does not declare it."""
    knobs = dict(pipe.knobs)
    retrieves = [s.instance for s in pipe.stages if s.name == "retrieve"]
    if "top_k" not in knobs and retrieves:
        target = (f"stages.{retrieves[-1]}.k",)
        knobs["top_k"] = DeclaredKnob("top_k", "Results (top-k)", target, 1.0, 200.0, 1.0)
    return knobs


def page_knobs(pipe: Any, declared: Mapping[str, DeclaredKnob]) -> dict[str, Knob]:
    """The page's view of each declared knob, with the pipeline's current value."""
    out = {}
    for key, knob in declared.items():
        value = pipe.value_at(knob.targets[0])
        out[key] = Knob(
            key, knob.label, knob.targets, value, knob.low, knob.high, knob.step, knob.choices
        )
    return out


# ---------------------------------------------------------------------- helpers
def _label(pipeline: str) -> str:
    """The name shown for a pipeline: its shipped name, or its file name for a YAML path."""
    path = pipeline_path(pipeline)
    return path.stem


def _assign_overrides(
    specs: Mapping[str, str], overrides: list[tuple[str, Any]]
) -> dict[str, dict[str, Any]]:
    """For each pipeline, the operator overrides whose stage it has (each must apply somewhere)."""
    import yaml

    spec_dicts = {name: yaml.safe_load(Path(path).read_text()) for name, path in specs.items()}
    assigned: dict[str, dict[str, Any]] = {name: {} for name in specs}
    for key, value in overrides:
        takers = []
        for name, spec in spec_dicts.items():
            try:
                apply_overrides(spec, {key: value})
            except ConfigError:
                continue
            assigned[name][key] = value
            takers.append(name)
        if not takers:
            raise ConfigError(
                f"override {key}={value!r} matches no stage of the offered "
                f"pipelines ({', '.join(specs)}); see `cir pipelines show NAME`"
            )
    return assigned
