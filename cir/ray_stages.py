"""Language stages and gallery captions as Ray Data map stages over a pool of model actors.

A stage that asks a language model (``caption``, ``recompose``, ``reason``, ``rerank``, ...) can run
its batches on a Ray cluster: each actor rebuilds the stage from its name and params, loads the
model once (transformers or vLLM, one actor per GPU, else per CPU slot) and runs batches of query
states. The content cache stays the source of truth: every actor opens the same cache, looks up
each request before asking its model and writes each answer as soon as its batch is done, so a
second run is served from the cache and an interrupted one resumes. On several nodes the cache
folder must be storage every node sees at the same path.

Example:
    >>> states = pipeline.run(queries, index, cache=ContentCache("/shared/cache"), ray="auto")
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

from cir import ray_engine
from cir.context import Context
from cir.resources import Resources


def runs_on_ray(stage: Any) -> bool:
    """Whether ``stage`` is a batch stage of language models (what Ray runs; the rest stays)."""
    return bool(stage.language_models) and not stage.whole_set and not stage.uses_encoder


def blueprint(stage: Any) -> tuple[type, str, dict[str, Any]]:
    """What an actor needs to rebuild ``stage``: its class, instance name and params."""
    from cir.params import params_to_dict

    return type(stage), stage.instance, params_to_dict(stage.params)


class _StageHost:
    """A Ray actor holding one stage with its models loaded, and the shared content cache."""

    def __init__(self, plan: tuple, cache_path: str | None, device: str, index: Any = None):
        from cir.cache import ContentCache

        cls, instance, params = plan
        self.stage = cls(instance, **params)
        cache = ContentCache(cache_path) if cache_path else None
        self.ctx = Context(index=index, resources=Resources(), cache=cache, device=device)
        self.stage.setup(self.ctx)


class _StatesActor(_StageHost):
    """Runs the stage on batches of pickled query states."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        states = [pickle.loads(blob) for blob in batch["state"]]
        done = self.stage.run(states, self.ctx)
        return {"n": list(batch["n"]), "state": [pickle.dumps(s) for s in done]}


class _CaptionActor(_StageHost):
    """Captions batches of gallery image paths with a ``caption`` stage."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        paths = list(batch["path"])
        captions = self.stage.caption_images(paths, self.ctx)
        return {"n": list(batch["n"]), "captions": [json.dumps(c) for c in captions]}


def run_stage(stage: Any, states: list, ctx: Context, batch_size: int, options: dict) -> list:
    """``stage`` over ``states`` on Ray, ``batch_size`` states per actor call; states in order.

    ``options`` holds ``ray`` (see :mod:`cir.ray_engine`) and ``workers`` (actors).
    """
    rows = [{"n": n, "state": pickle.dumps(s)} for n, s in enumerate(states)]
    out = list(states)
    for row in _map(_StatesActor, stage, rows, ctx, ctx.index, batch_size, options):
        out[int(row["n"])] = pickle.loads(row["state"])
    return out


def caption_paths(
    captioner: Any, paths: list, ctx: Context, batch_size: int, options: dict
) -> Iterator[tuple[int, list[str]]]:
    """``(position, captions)`` of each of ``paths``, captioned on Ray, as they come back (in
    any order), so the caller can record progress as it goes."""
    rows = [{"n": n, "path": str(p)} for n, p in enumerate(paths)]
    for row in _map(_CaptionActor, captioner, rows, ctx, None, batch_size, options):
        yield int(row["n"]), json.loads(row["captions"])


def _map(actor: type, stage: Any, rows: list, ctx: Context, index, batch_size, options) -> Iterator:
    """The rows of ``rows`` mapped by a pool of ``actor`` holding ``stage`` (and ``index``)."""
    data = ray_engine.connect(options["ray"])
    pool = ray_engine.model_pool(options.get("workers"), ctx.device)
    cache = getattr(ctx.cache, "path", None)
    args = {"plan": blueprint(stage), "cache_path": str(cache) if cache else None}
    args |= {"device": pool.device, "index": index}
    blocks = max(1, -(-len(rows) // batch_size))
    mapped = data.from_items(rows, override_num_blocks=blocks).map_batches(
        actor, batch_size=batch_size, fn_constructor_kwargs=args, **pool.map_options()
    )
    yield from ray_engine.rows_of(mapped)
