"""Declarative pipelines: stages named in YAML, validated at load time, run stage by stage.

Example:
    >>> pipe = load_pipeline("clip_fusion", overrides=["stages.fuse.alpha=0.7"])
    >>> states = pipe.run([Query("make it red", reference="dress.jpg")], index)
    >>> print(pipe.flow())            # which stage writes what, and who reads it
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from cir.errors import ConfigError
from cir.execution import RunGroup, execute
from cir.gallery_captions import GalleryCaptionSpec
from cir.models.spec import EncoderSpec
from cir.pipeline_file import (
    Deviation,
    Knob,
    apply_overrides,
    apply_presets,
    check_top_level,
    entries,
    list_pipelines,
    parse_override,
    pipeline_path,
    read_dataset_settings,
    read_deviations,
    read_knobs,
    read_spec,
)
from cir.published import Published, read_published
from cir.resources import Resources
from cir.stages.base import Context, Port, Stage, registered_stages, stage_class
from cir.types import Query, QueryState

__all__ = [
    "QUERY_PORTS",
    "Pipeline",
    "apply_overrides",
    "list_pipelines",
    "load_pipeline",
    "parse_override",
    "pipeline_path",
]

#: What every query provides (``query.image`` is checked per query at run time).
QUERY_PORTS = (Port("query.text", "text"), Port("query.image", "image"))
QUERY_FIELDS = tuple(p.field for p in QUERY_PORTS)
OnStage = Callable[[int, int, str], None]


class Pipeline:
    """An ordered chain of stages over a gallery index.

    Args:
        stages: the stages, in order.
        name / description / paper: what the pipeline is (``paper`` in ``extra``).
        presets: named override sets (per dataset and backbone).
        encoder: the declared encoder (index builds, benchmark runs, encoding stages).
        deviations: the remaining differences from the paper.
        knobs: the controls the demo offers.
        applied: the presets this instance was built with.
        gallery_captions: the gallery captions its rules read (made by ``cir bench run``).
        published: the paper's numbers for the settings the presets reproduce.
        dataset: benchmark settings after the presets (``text_rule``).

    Example:
        >>> pipe = load_pipeline("clip_fusion", overrides=["stages.fuse.alpha=0.7"])
        >>> states = pipe.run([Query("make it red", reference="dress.jpg")], index)
        >>> states[0].ranking.ids[:5]
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        name: str = "",
        description: str = "",
        presets: dict[str, dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        encoder: EncoderSpec | None = None,
        deviations: Sequence[Deviation] | None = None,
        knobs: dict[str, Knob] | None = None,
        applied: Sequence[str] = (),
        gallery_captions: GalleryCaptionSpec | None = None,
        published: Sequence[Published] = (),
        dataset: dict[str, str] | None = None,
    ) -> None:
        self.stages = list(stages)
        self.name = name
        self.description = description
        self.presets = presets or {}
        self.extra = extra or {}
        self.encoder = encoder
        self.deviations = tuple(deviations) if deviations is not None else None
        self.knobs = knobs or {}
        self.applied = tuple(applied)
        self.gallery_captions = gallery_captions
        self.published = tuple(published)
        self.dataset = dict(dataset or {})
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(
        cls,
        spec: dict[str, Any],
        overrides: Iterable[str] | dict[str, Any] = (),
        preset: str | Sequence[str] | None = None,
    ) -> Pipeline:
        """Build from a mapping shaped like a pipeline YAML file.

        ``preset`` (a name or a list of names) applies the file's named override sets first;
        ``overrides`` (``"stages.fuse.alpha=0.7"`` strings or a dict) are applied after them.
        """
        check_top_level(spec)
        names = [preset] if isinstance(preset, str) else list(preset or ())
        resolved = apply_overrides(apply_presets(spec, names), overrides)
        stages = [_build_stage(entry, i) for i, entry in enumerate(entries(resolved))]
        encoder = resolved.get("encoder")
        captions = resolved.get("gallery_captions")
        return cls(
            stages,
            resolved.get("name", ""),
            resolved.get("description", ""),
            spec.get("presets") or {},
            {"paper": resolved["paper"]} if "paper" in resolved else {},
            EncoderSpec.from_config(encoder) if encoder is not None else None,
            read_deviations(resolved["deviations"]) if "deviations" in resolved else None,
            read_knobs(resolved.get("knobs")),
            names,
            GalleryCaptionSpec.from_config(captions) if captions is not None else None,
            read_published(resolved.get("published")),
            read_dataset_settings(resolved.get("dataset")),
        )

    @classmethod
    def from_yaml(
        cls,
        source: str | Path,
        overrides: Iterable[str] | dict[str, Any] = (),
        preset: str | Sequence[str] | None = None,
    ) -> Pipeline:
        """Build from a YAML file path or a YAML string."""
        return cls.from_dict(read_spec(source), overrides, preset)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out.update(self.extra)
        if self.encoder is not None:
            out["encoder"] = self.encoder.to_dict()
        if self.gallery_captions is not None:
            out["gallery_captions"] = self.gallery_captions.to_dict()
        if self.dataset:
            out["dataset"] = dict(self.dataset)
        out["stages"] = [stage.to_dict() for stage in self.stages]
        if self.presets:
            out["presets"] = {k: dict(v) for k, v in self.presets.items()}
        if self.deviations is not None:
            out["deviations"] = [d.to_dict() for d in self.deviations]
        if self.published:
            out["published"] = [row.to_dict() for row in self.published]
        if self.knobs:
            out["knobs"] = {k: knob.to_dict() for k, knob in self.knobs.items()}
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def stage(self, name: str) -> Stage:
        """The stage instance called ``name``."""
        for stage in self.stages:
            if stage.instance == name:
                return stage
        raise ConfigError(f"no stage named {name!r}; stages: {self._names()}")

    def active_deviations(self) -> list[Deviation]:
        """The declared deviations that apply with the presets this instance was built with."""
        return [d for d in self.deviations or () if d.applies(self.applied)]

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.instance in seen:
                raise ConfigError(
                    f"two stages are named {stage.instance!r}; give one a distinct `name:`"
                )
            seen.add(stage.instance)
        available = {p.field: ("the query", p) for p in QUERY_PORTS}
        for stage in self.stages:
            for port in stage.bound_inputs():
                if port.field not in available:
                    raise ConfigError(_missing_message(stage, port.field, set(available)))
                _check_kind(stage, port, *available[port.field])
            available.update({p.field: (stage.instance, p) for p in stage.bound_outputs()})
        for knob in self.knobs.values():
            for target in knob.targets:
                self.value_at(target)

    def value_at(self, path: str) -> Any:
        """The resolved value at a dotted ``stages.<name>.<param>[.<key>]`` path."""
        parts = path.split(".")
        if parts[0] != "stages" or len(parts) < 3:
            raise ConfigError(f"{path!r} is not a stages.<stage>.<param> path")
        node: Any = self.stage(parts[1]).to_dict().get("params", {})
        for part in parts[2:]:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(
                    f"{path!r} names no parameter of this pipeline (set it explicitly in the "
                    f"stage's params to make it adjustable)"
                )
            node = node[part]
        return node

    def _names(self) -> str:
        return ", ".join(s.instance for s in self.stages)

    def flow(self) -> str:
        """The data flow, one line per stage: what it reads (and from whom) and what it writes."""
        writer = {p.field: "query" for p in QUERY_PORTS}
        lines = []
        for stage in self.stages:
            reads = [f"{p.field} ({p.kind}, from {writer[p.field]})" for p in stage.bound_inputs()]
            writes = [f"{p.field} ({p.kind})" for p in stage.bound_outputs()]
            head = (
                stage.instance
                if stage.instance == stage.name
                else f"{stage.instance} [{stage.name}]"
            )
            scope = ", whole query set" if stage.whole_set else ""
            lines.append(f"{head}{scope}\n  reads:  {'; '.join(reads) or '-'}")
            lines.append(f"  writes: {'; '.join(writes) or '-'}")
            writer.update({p.field: stage.instance for p in stage.bound_outputs()})
        return "\n".join(lines)

    # ------------------------------------------------------------------ running
    def setup(self, ctx: Context) -> None:
        """Load every stage's models now (the demo warms up this way)."""
        for stage in self.stages:
            stage.setup(ctx)

    def run(
        self,
        queries: Sequence[Query],
        index: Any = None,
        batch_size: int = 32,
        cache: Any = None,
        resources: Resources | None = None,
        device: str | None = None,
        progress: bool | None = None,
        on_stage: OnStage | None = None,
        keep_models: bool = False,
        ray: bool | str | None = None,
    ) -> list[QueryState]:
        """Run every query through the stages, stage by stage.

        Each stage runs over the whole query set before the next starts, ``batch_size`` queries
        at a time (a stage whose rule spans the set sees all of it at once). A model is loaded
        when the first stage naming it starts and released after the last one, so peak memory
        is the largest stage's, not the sum.

        Args:
            queries: the requests.
            index: the ``GalleryIndex`` to search (stages that need none accept None).
            batch_size: queries per stage call.
            cache: a ``ContentCache`` for captions, LLM outputs and embeddings, or None.
            resources: shared model cache (defaults to the process-wide one).
            device: force a device for models; automatic when None.
            progress: show progress bars (default: when there is more than one batch).
            on_stage: called as ``on_stage(position, number_of_stages, stage_name)`` before
                each stage runs.
            keep_models: keep the models loaded after the run (interactive search, the demo);
                by default each is released after the last stage that uses it.
            ray: run the language-model stages' batches on a Ray cluster (``True`` for a local
                one, or its address ``"auto"``), the content cache shared by the actors
                (``pip install 'cir[ray]'``; see :mod:`cir.ray_stages`).

        Returns:
            One ``QueryState`` per query, in order, with ranking and trace.
        """
        options = {"batch_size": batch_size, "cache": cache, "resources": resources}
        options |= {"device": device, "progress": progress, "on_stage": on_stage, "ray": ray}
        return self.run_groups(
            [RunGroup(list(queries), index)], keep_models=keep_models, **options
        )[0]

    def run_groups(self, groups: Sequence[RunGroup], **options: Any) -> list[list[QueryState]]:
        """Run several query sets, each over its own index (FashionIQ's three categories),
        stage by stage across all of them. ``options`` are those of :meth:`run` and
        :func:`cir.execution.execute` (``keep_artifacts``, ``keep_embeddings``)."""
        return execute(self, groups, **options)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}: {' -> '.join(s.instance for s in self.stages)})"


def load_pipeline(
    name_or_path: str | Path,
    overrides: Iterable[str] | dict[str, Any] = (),
    preset: str | Sequence[str] | None = None,
) -> Pipeline:
    """Load a shipped pipeline by name (``"clip_fusion"``) or a YAML file by path.

    Example:
        >>> load_pipeline("clip_fusion", overrides=["stages.retrieve.k=10"])
    """
    return Pipeline.from_yaml(pipeline_path(name_or_path), overrides, preset)


# ---------------------------------------------------------------------- helpers
def _build_stage(entry: dict[str, Any], position: int) -> Stage:
    cls = stage_class(entry["stage"])
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"stages[{position}] ({entry['stage']}): `params:` must be a mapping")
    return cls(entry.get("name"), **params)


def _check_kind(stage: Stage, port: Port, writer: str, written: Port) -> None:
    """One vector cannot be read where N were written (combine them first)."""
    if port.kind == "vector" and written.kind == "vectors":
        raise ConfigError(
            f"stage {stage.instance!r} reads {port.field!r} as one vector, but {writer!r} "
            "writes several there; combine them first (encode_text `combine: mean`, or an "
            "`ensemble` stage)"
        )


def _missing_message(stage: Stage, field: str, available: set[str]) -> str:
    writers = [hint for name, cls in registered_stages().items() if (hint := _writer(cls, field))]
    hint = f"stages that can write it: {', '.join(writers)}" if writers else "no stage writes it"
    return (
        f"stage {stage.instance!r} reads {field!r}, but no earlier stage writes it ({hint}); "
        f"available at that point: {', '.join(sorted(available))}"
    )


def _writer(cls: type[Stage], field: str) -> str | None:
    """``name`` or ``name (output: x)`` when stage class ``cls`` can write ``field``."""
    try:
        ports = cls().outputs
    except ConfigError:
        return None
    for port in ports:
        head, _, tail = port.field.partition("{")
        param = port.param
        if port.field == field:
            return cls.name
        if (
            param
            and field.startswith(head)
            and tail.endswith("}")
            and "." not in field[len(head) :]
        ):
            return f"{cls.name} ({param}: {field[len(head) :]})"
    return None
