"""How a pipeline runs: stage by stage over the whole query set, each model loaded only while used.

::

    stage 1 ──► every query (batch by batch) ──► release the models no later stage names
    stage 2 ──► every query ...                      (GPU memory returned, engines stopped)
    ...

A stage whose rule spans the query set (``whole_set``, LDRE's ensemble) gets every query of a
group in one call. Between stages the states hold texts and host-side embeddings; with
``keep_embeddings=False`` the embeddings no later stage reads are dropped, and with
``keep_artifacts=False`` the pictures (grids, imagined images) no later stage reads. Several
*groups* (a query set over its own index, such as FashionIQ's three categories) go through each
stage before the next stage starts, so models load once for all of them.

Example:
    >>> groups = [RunGroup(dress_queries, dress_index), RunGroup(shirt_queries, shirt_index)]
    >>> dress, shirt = execute(pipeline, groups, batch_size=64, cache=cache)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from cir import ray_engine, ray_stages
from cir.context import Context
from cir.errors import ConfigError
from cir.resources import Resources, default_resources
from cir.types import Query, QueryState, StageRecord

if TYPE_CHECKING:
    from cir.pipeline import Pipeline
    from cir.stages.base import Stage


@dataclass
class RunGroup:
    """Queries searched against one gallery index."""

    queries: Sequence[Query]
    index: Any = None


def execute(
    pipeline: Pipeline,
    groups: Sequence[RunGroup],
    *,
    batch_size: int = 32,
    cache: Any = None,
    resources: Resources | None = None,
    device: str | None = None,
    progress: bool | None = None,
    on_stage: Callable[[int, int, str], None] | None = None,
    keep_models: bool = False,
    keep_artifacts: bool = True,
    keep_embeddings: bool = True,
    ray: bool | str | None = None,
    ray_workers: int | None = None,
) -> list[list[QueryState]]:
    """Run ``groups`` through ``pipeline`` stage by stage; one list of states per group.

    Args:
        keep_models: keep every model loaded afterwards (interactive use); otherwise each is
            released after the last stage naming it, and all are released if the run fails.
        keep_artifacts: keep large per-query artifacts (grid images, drawn pictures) in the
            states once no later stage reads them.
        keep_embeddings: keep embeddings no later stage reads.
        ray: run the batches of language-model stages on a Ray cluster (``True`` for a local
            one, or its address) with a pool of model actors sharing ``cache``; other stages
            run here (see :mod:`cir.ray_stages`).
        ray_workers: model actors per stage on Ray (default: one per GPU, else per spare CPU).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    resources = resources or default_resources
    total = sum(len(g.queries) for g in groups)
    show = progress if progress is not None else total > batch_size
    contexts = [
        Context(g.index, resources, cache, device, show, pipeline.encoder, keep_artifacts)
        for g in groups
    ]
    states = [[QueryState(q) for q in g.queries] for g in groups]
    last_use = model_schedule(pipeline.stages, contexts)
    stages = pipeline.stages
    on_ray = {"ray": ray, "workers": ray_workers} if ray_engine.wanted(ray) else None
    try:
        for position, stage in enumerate(stages):
            if on_stage is not None:
                on_stage(position, len(stages), stage.instance)
            with tqdm(total=total, desc=stage.instance, disable=not show, unit="query") as bar:
                for ctx, group in zip(contexts, states, strict=True):
                    _run_stage(stage, group, ctx, batch_size, bar, on_ray)
            if not keep_models:
                stage.teardown()
                resources.release_all(k for k, last in last_use.items() if last == position)
            _drop_unread(states, stages[position + 1 :], keep_embeddings, keep_artifacts)
    except BaseException:
        if not keep_models:
            for stage in stages:
                stage.teardown()
            resources.release_all(last_use)
        raise
    return states


def model_schedule(stages: Sequence[Stage], contexts: Sequence[Context]) -> dict[Hashable, int]:
    """For each model a run loads, the position of the last stage that names it."""
    last: dict[Hashable, int] = {}
    for position, stage in enumerate(stages):
        for ctx in contexts:
            for use in stage.models(ctx):
                last[use.key] = position
    return last


def _run_stage(
    stage: Stage, states: list[QueryState], ctx: Context, batch_size: int, bar, on_ray=None
) -> None:
    if not states:
        return
    for state in states:
        state.trace.append(StageRecord(stage=stage.name, name=stage.instance))
    if on_ray is not None and ray_stages.runs_on_ray(stage):
        started = time.perf_counter()
        states[:] = ray_stages.run_stage(stage, states, ctx, batch_size, on_ray)
        for state in states:
            stage.record(state).seconds += (time.perf_counter() - started) / len(states)
        bar.update(len(states))
        return
    stage.setup(ctx)
    step = len(states) if stage.whole_set else batch_size
    for start in range(0, len(states), step):
        batch = states[start : start + step]
        started = time.perf_counter()
        out = stage.run(batch, ctx)
        if out is None or len(out) != len(batch):
            raise ConfigError(
                f"stage {stage.instance!r} returned {'nothing' if out is None else len(out)} "
                f"for {len(batch)} states; a stage returns every state it was given, in order"
            )
        states[start : start + step] = out
        share = (time.perf_counter() - started) / len(batch)
        for state in out:
            stage.record(state).seconds += share
        bar.update(len(batch))


def _drop_unread(
    groups: list[list[QueryState]], later: Sequence[Stage], embeddings: bool, artifacts: bool
) -> None:
    """Drop the embeddings (unless ``embeddings``) and pictures (unless ``artifacts``) that no
    later stage reads."""
    if embeddings and artifacts:
        return
    reads = {f for s in later for f in s.reads}
    for states in groups:
        for state in states:
            if not embeddings:
                for name in [n for n in state.embeddings if f"embeddings.{n}" not in reads]:
                    del state.embeddings[name]
            if not artifacts:
                for name in [n for n, v in state.data.items() if _is_picture(v)]:
                    if f"data.{name}" not in reads:
                        del state.data[name]


def _is_picture(value: Any) -> bool:
    from PIL import Image

    items = value if isinstance(value, list | tuple) else [value]
    return bool(items) and all(isinstance(v, Image.Image) for v in items)
