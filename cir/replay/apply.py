"""Putting the authors' published outputs where a benchmark run will find them.

Query outputs (captions, edits, target descriptions) become content-cache entries keyed exactly
as the pipeline's own stages key their requests (same model identity, prompt, sampling,
variables and reference image), so ``cir bench run`` with that pipeline answers those requests
from the file instead of asking a model. Gallery captions (WeiMoCIR) become the caption sidecar
of the benchmark's cached gallery index. Every entry is marked ``replay:<sha256 of the file>``,
and runs count how many outputs came from it.

Example:
    >>> summary = replay_query_outputs(
    ...     "ldre", "LDRE/CIRCO/annotations/test.json", dataset="circo", split="test",
    ...     data_root="/data/CIRCO", pipeline="ldre")
    >>> summary["queries"], summary["entries"]
    (800, 12800)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cir._paths import file_sha256
from cir.context import Context
from cir.errors import ConfigError, DataError
from cir.generation import Ask
from cir.llm import backend_identity
from cir.prompts import load_prompt
from cir.replay.cirevl import read_cirevl_captions, read_cirevl_mods
from cir.replay.ldre import read_ldre
from cir.replay.osrcir import read_osrcir
from cir.replay.records import QueryRecord
from cir.replay.weimocir import caption_rows, read_gallery_captions
from cir.stages._prompted import stage_generator
from cir.types import Query

QUERY_METHODS = ("ldre", "seize", "cirevl", "osrcir")
GALLERY_METHODS = ("weimocir",)
METHODS = QUERY_METHODS + GALLERY_METHODS


class _Unloaded:
    """A backend known by its identity only: replayed requests never reach a model."""

    def __init__(self, identity: str) -> None:
        self.identity = identity

    def generate(self, requests: Any) -> Any:
        raise ConfigError("a replayed request reached the model; this is a bug in cir.replay")


def replay_query_outputs(
    method: str,
    path: str | Path,
    *,
    dataset: str,
    data_root: str | Path,
    pipeline: str | Path,
    split: str = "test",
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    encoder: str | None = None,
    category: str | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``method``'s released per-query outputs in ``path`` into the content cache.

    The run this prepares is ``cir bench run DATASET --split SPLIT --pipeline PIPELINE`` (with
    the same ``--encoder`` and ``--set`` overrides): its dataset and backbone presets decide
    the stages' settings.

    Returns:
        counts: ``queries`` replayed, cache ``entries`` written, ``unmatched`` records (ids the
        split does not have), ``without_record`` queries, ``modification_differs`` (records
        whose stored modification is not the run's query text; the run's text keys the entry),
        and the ``source`` mark.
    """
    from cir.bench.runner import _content_cache, _default_cache_dir, open_run

    _check_method(method, QUERY_METHODS)
    _, pipe, _, parts = open_run(
        dataset, data_root, image_root, pipeline, split, encoder, overrides
    )
    queries = [(q, part.gallery) for part in parts for q in part.queries]
    records = _read_records(method, Path(path), [q.id for q, _ in queries], category)
    writers = _writers(method, pipe)
    cache = _content_cache(Path(cache_dir) if cache_dir else _default_cache_dir())
    entries, counts = [], {"queries": 0, "modification_differs": 0, "without_record": 0}
    for query, gallery in queries:
        record = records.get(query.id)
        if record is None:
            counts["without_record"] += 1
            continue
        counts["queries"] += 1
        counts["modification_differs"] += _differs(record, query)
        image = _reference_image(query, gallery)
        for write in writers:
            entries += write(query, image, record, cache)
    source = f"replay:{file_sha256(path)}"
    cache.put_many(entries, source=source)
    matched = {q.id for q, _ in queries}
    unmatched = sum(1 for qid in records if qid not in matched)
    return {**counts, "entries": len(entries), "unmatched": unmatched, "source": source}


def replay_gallery_captions(
    path: str | Path,
    *,
    dataset: str,
    data_root: str | Path,
    pipeline: str | Path,
    split: str = "test",
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    encoder: str | None = None,
    k: int = 3,
    name: str = "captions",
    device: str | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Attach WeiMoCIR's released gallery captions (first ``k`` per image, empty where an image
    has none, as the reference code does) to the benchmark's cached gallery index.

    Returns:
        ``images`` captioned per part, ``missing`` (images without an entry: empty captions),
        and the ``source`` mark.
    """
    from cir.bench.gallery import gallery_index, index_folder
    from cir.bench.runner import _default_cache_dir, open_run
    from cir.gallery_captions import set_caption_sidecar
    from cir.models.shared import resolve_encoder

    ds, _, spec, parts = open_run(
        dataset, data_root, image_root, pipeline, split, encoder, overrides
    )
    records = read_gallery_captions(path)
    cache_root = Path(cache_dir) if cache_dir else _default_cache_dir()
    source = f"replay:{file_sha256(path)}"
    images, missing = 0, []
    for part in parts:
        index, _ = gallery_index(ds.name, part, spec, cache_root, device, progress=False)
        rows, absent = caption_rows(records, list(index.ids), k)
        text_encoder = resolve_encoder(Context(index=index, device=device), "replay", None)
        set_caption_sidecar(index, rows, text_encoder, name, source=source)
        index.save(index_folder(cache_root, ds.name, part, spec) / "index")
        images += len(rows)
        missing += absent
    return {"images": images, "missing": missing, "source": source}


# ---------------------------------------------------------------------- reading
def _check_method(method: str, valid: Sequence[str]) -> None:
    if method not in valid:
        raise ConfigError(f"unknown replay method {method!r} here; valid: {', '.join(valid)}")


def _read_records(
    method: str, path: Path, query_ids: list[str], category: str | None
) -> dict[str, QueryRecord]:
    if method in ("ldre", "seize"):
        return read_ldre(path, category=category)
    if method == "osrcir":
        return read_osrcir(path, category=category)
    if path.suffix == ".pkl":
        return read_cirevl_captions(path, query_ids)
    return read_cirevl_mods(path, query_ids)


def _differs(record: QueryRecord, query: Query) -> int:
    return int(record.modification is not None and record.modification != query.text)


def _reference_image(query: Query, gallery: dict[str, Path]) -> Any:
    if query.reference is not None:
        return query.reference
    path = gallery.get(query.reference_id or "")
    if path is None:
        raise DataError(
            f"query {query.id!r}: reference {query.reference_id!r} is not in the gallery"
        )
    return path


# ---------------------------------------------------------------------- writing
Writer = Callable[[Query, Any, QueryRecord, Any], list]


def _writers(method: str, pipe: Any) -> list[Writer]:
    """One entry writer per stage whose outputs the file holds."""
    stages = {stage.name: stage for stage in pipe.stages}
    if method == "osrcir":
        wanted = {"reason": _reason_entries}
    else:
        wanted = {"caption": _caption_entries, "recompose": _recompose_entries}
    missing = [name for name in wanted if name not in stages]
    if missing:
        raise ConfigError(
            f"pipeline {pipe.name!r} has no {' or '.join(missing)} stage; {method} outputs replay "
            f"into the stage(s) {', '.join(wanted)}"
        )
    return [_bound(write, stages[name]) for name, write in wanted.items()]


def _bound(write: Callable, stage: Any) -> Writer:
    generator = _generator(stage)
    return lambda query, image, record, cache: write(stage, generator, query, image, record)


def _generator(stage: Any):
    p = stage.params
    spec = getattr(p, "captioner", None) or p.llm
    prompt = load_prompt(p.prompt, stage=stage.name)
    options: dict[str, Any] = {}
    if stage.name == "caption":
        options = {"kind": "caption", "n": p.num_captions}
    elif getattr(p, "json_mode", False):
        options = {"json_mode": True}
    backend = _Unloaded(backend_identity(spec))
    return stage_generator(stage.name, backend, prompt, p, spec, Context(), **options)


def _caption_entries(stage, generator, query, image, record: QueryRecord) -> list:
    if not record.captions:
        return []
    if len(record.captions) != stage.params.num_captions:
        raise DataError(
            f"query {query.id!r}: the file holds {len(record.captions)} captions, the pipeline "
            f"samples {stage.params.num_captions}; set stages.{stage.instance}.num_captions="
            f"{len(record.captions)}"
        )
    return [generator.cache_entry(Ask({}, (image,)), list(record.captions))]


def _recompose_entries(stage, generator, query, image, record: QueryRecord) -> list:
    if len(record.targets) != len(record.captions):
        raise DataError(
            f"query {query.id!r}: {len(record.targets)} edits for {len(record.captions)} captions"
        )
    out = []
    for caption, target in zip(record.captions, record.targets, strict=True):
        values = {"caption": caption, "modification": query.text}
        variables = {k: values[k] for k in generator.prompt.variables}
        out.append(generator.cache_entry(Ask(variables), [_as_answer(generator.prompt, target)]))
    return out


def _as_answer(prompt: Any, text: str) -> str:
    """The released text as the prompt's parser reads it back (a released edit is the parsed
    answer: a labelled-line prompt gets its label back, a one-key JSON prompt its key)."""
    spec = prompt.parser_spec
    if spec.get("kind") == "labelled_line":
        return f"{spec['label']}: {text}"
    if spec.get("kind") == "json_key":
        return json.dumps({spec["key"]: text}, ensure_ascii=False)
    return text


def _reason_entries(stage, generator, query, image, record: QueryRecord) -> list:
    if not record.targets:
        return []
    p = stage.params
    answer = {p.target_key: record.targets[0]}
    if record.captions:
        answer[p.reference_key] = record.captions[0]
    keys = getattr(p, "reasoning_keys", None) or [p.reasoning_key]
    answer |= dict(zip(keys, record.reasoning, strict=False))
    variables = {k: query.text for k in generator.prompt.variables}
    text = json.dumps(answer, ensure_ascii=False)
    return [generator.cache_entry(Ask(variables, (image,)), [text])]
