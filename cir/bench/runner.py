"""``cir bench run``: a pipeline over a benchmark split, from gallery index to report.

Steps: check the data; build (or reuse from the cache folder) one gallery index per
(dataset, split, part, encoder) with the pipeline's declared encoder and preprocessing; run the
pipeline stage by stage over the whole split (every part at once, each against its own index)
with the content cache, the dataset's and backbone's presets and the benchmark's protocol set
on every ``retrieve`` stage by overrides (so no pipeline needs editing); write the rankings in the
official formats (validated first), the metrics for ``val``, a manifest and a report.

A run that is killed and started again continues from what it finished: the gallery index resumes
shard by shard and every caption, LLM answer and embedding already computed comes from the
content cache, so the predictions written are the same.

Example:
    >>> result = run_benchmark("cirr", "val", data_root="/data/cirr", pipeline="clip_fusion",
    ...                        encoder="ViT-L-14/openai", out_dir="runs/cirr-clip")
    >>> result.metrics["Recall@1"]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cir.bench.datasets import BenchDataset, Part, Protocol, get_dataset
from cir.bench.evaluate import score
from cir.bench.gallery import caption_galleries, gallery_index
from cir.bench.manifest import StageTotals, build_manifest, write_manifest
from cir.bench.metrics import subset_ranking
from cir.bench.missing import drop_missing_images, missing_metric_entries
from cir.bench.report import write_report
from cir.bench.submission import write_submission
from cir.errors import ConfigError, DataError
from cir.execution import RunGroup
from cir.index.backends import use_backend
from cir.models.spec import EncoderSpec
from cir.rerank.subset import SUBSET_RANKING
from cir.resources import Resources, default_resources
from cir.types import QueryState


@dataclass
class BenchResult:
    """What a benchmark run wrote and measured."""

    out_dir: Path
    files: list[Path]
    metrics: dict[str, float]
    manifest: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """One flat JSON-ready object for ``--json``."""
        totals = self.manifest.get("trace_totals", {})
        return {
            "out_dir": str(self.out_dir),
            "queries": self.manifest.get("queries"),
            "complete": self.manifest.get("complete"),
            "index_reused": all(i["reused"] for i in self.manifest.get("indexes", {}).values()),
            "cache_hit_rate": totals.get("cache_hit_rate"),
            "fallbacks": totals.get("fallbacks"),
            **self.metrics,
        }


def run_benchmark(
    dataset: str,
    split: str,
    *,
    data_root: str | Path,
    pipeline: str | Path,
    image_root: str | Path | None = None,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    encoder: str | None = None,
    text_rule: str | None = None,
    categories: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    no_cache: bool = False,
    overrides: Sequence[str] = (),
    preset: str | None = None,
    device: str | None = None,
    compute: str = "auto",
    backend: str = "exact",
    nprobe: int | None = None,
    rescore: int | None = None,
    workers: int = 0,
    progress: bool = True,
    resources: Resources | None = None,
    keep_models: bool = False,
    allow_missing: bool = False,
    ray: bool | str | None = None,
    ray_workers: int | None = None,
) -> BenchResult:
    """Run ``pipeline`` on a benchmark split and write predictions, metrics, manifest, report.

    Args:
        dataset: ``circo``, ``cirr``, ``fashioniq``, ``genecis``, ``icir`` or ``zerosight``.
        split: ``val`` (scored locally) or ``test`` (submission files).
        data_root / image_root: the official layout (see ``cir data check``).
        pipeline: a shipped pipeline name or a YAML path.
        out_dir: the run folder (default ``runs/<dataset>-<split>-<pipeline>-<time>``).
        cache_dir: gallery indexes and the content cache (default: the cir cache folder).
        encoder: the CLIP encoder of the gallery index (default: the pipeline's ``encoder:``,
            whose preprocessing is kept).
        categories / tasks: FashionIQ categories, GeneCIS tasks (default: all / those present).
        limit: only the first N queries (the gallery stays whole; no submission is complete).
        overrides / preset: as for ``cir search``; by default the presets named after the
            dataset and the backbone apply (``cirr``, ``@ViT-bigG-14``, ``cirr@ViT-bigG-14``;
            a GeneCIS run of one task also ``genecis/<task>``).
        workers: DataLoader workers for building an index.
        compute: the gallery search's compute path (``auto`` or one to force).
        backend / nprobe / rescore: search through an approximate backend (``ivfpq``,
            ``milvus:URI[#collection]``); the manifest then says so under ``indexes``.
        resources: the model cache (its load/release events go into the manifest).
        keep_models: keep every model loaded after the run (several runs in one process);
            by default each is released after the last stage that uses it.
        allow_missing: run on the images present (see ``cir.bench.missing``) instead of
            refusing when one is absent; the counts go into metrics, manifest and report.
        ray / ray_workers: run the language-model stages on a Ray cluster (see
            :func:`cir.execution.execute`); the predictions are the same.
    """
    from cir.index.compute import check_compute

    check_compute(compute)
    options = {"categories": categories, "tasks": tasks, "image_root": image_root}
    ds = open_dataset(dataset, data_root, pipeline, text_rule, overrides, preset, encoder, options)
    started = time.perf_counter()
    cache_root = Path(cache_dir) if cache_dir else _default_cache_dir()
    ds.use_cache(cache_root)  # files the reader derives (GeneCIS's crops) go there
    parts = _limit(ds.parts(split), limit)
    missing = None
    if allow_missing:  # absent images and the queries needing them are dropped and counted
        parts, missing = drop_missing_images(parts)
    else:
        _check_images(ds, split)
    pipe, presets, spec = _load(pipeline, overrides, preset, ds, parts, encoder)
    cache = None if no_cache else _content_cache(cache_root)
    out = Path(out_dir) if out_dir else _default_out(ds.name, split, pipe.name)
    out.mkdir(parents=True, exist_ok=True)
    resources = resources or default_resources
    first_event = len(resources.events)

    outcome = _Outcome()
    groups = []
    for part in parts:
        index, info = gallery_index(
            ds.name, part, spec, cache_root, device, workers, progress, resources
        )
        info["compute"] = index.set_compute(compute).describe()
        use_backend(index, backend, nprobe, rescore)
        info["search"] = index.approximate or "exact"
        outcome.indexes[part.name or ds.name] = info
        groups.append(RunGroup(part.queries, index))
    if pipe.gallery_captions is not None:  # the captions its rules read, made once per gallery
        ctx_args = {"resources": resources, "cache": cache, "device": device, "progress": progress}
        infos = list(outcome.indexes.values())
        ray_args = {"ray": ray, "ray_workers": ray_workers}
        caption_galleries(pipe, groups, infos, ctx_args, release=not keep_models, **ray_args)
    results = pipe.run_groups(
        groups, batch_size=batch_size, cache=cache, resources=resources, device=device,
        progress=progress, keep_models=keep_models, keep_artifacts=False, keep_embeddings=False,
        ray=ray, ray_workers=ray_workers,
    )  # fmt: skip
    if not keep_models:
        _release_encoder(resources, spec, device)
    with (out / "queries.jsonl").open("w", encoding="utf-8") as details:
        for states in results:
            outcome.add(states, ds.protocol)
            details.writelines(json.dumps(_detail(s), default=str) + "\n" for s in states)
    run_info = {
        "dataset": ds.name,
        "split": split,
        "data_root": str(ds.data_root),
        "image_root": str(ds.image_root),
        "text_rule": ds.text_rule,
        "protocol": vars(ds.protocol),
        "complete": limit is None and (missing is None or missing.queries_dropped == 0),
        "missing": missing.to_dict() if missing is not None else None,
        "presets": list(presets),
        "overrides": list(overrides),
        "deviations": [d.to_dict() for d in pipe.active_deviations()],
        "index": {"encoder": spec.to_dict()},
        "indexes": outcome.indexes,
        "content_cache": cache.stats.to_dict() if cache is not None else None,
        "model_lifecycle": lifecycle_summary(resources, first_event),
    }
    return _write_outputs(ds, split, parts, pipe, outcome, out, run_info, started)


@dataclass
class _Outcome:
    """What the pipeline produced: official-length rankings, subset rankings, trace sums."""

    rankings: dict[str, list[str]] = field(default_factory=dict)
    subsets: dict[str, list[str]] = field(default_factory=dict)
    subsets_reranked: int = 0
    totals: StageTotals = field(default_factory=StageTotals)
    indexes: dict[str, dict] = field(default_factory=dict)

    def add(self, states: list[QueryState], protocol: Protocol) -> None:
        for state in states:
            if state.ranking is None:
                raise ConfigError(
                    "the pipeline produced no ranking; it must end with a retrieve stage"
                )
            ids = list(state.ranking.ids)
            self.rankings[state.query.id] = ids if protocol.rank_all else ids[: protocol.k]
            if protocol.subset_k:
                self.subsets[state.query.id] = self._subset(state, ids, protocol.subset_k)
        self.totals.add(states)

    def _subset(self, state: QueryState, ids: list[str], k: int) -> list[str]:
        """The query's set members best first: a re-ranker's own order of them when the
        pipeline wrote one (CoTRR's subset protocol), else the ranking restricted to them."""
        own = state.data.get(SUBSET_RANKING)
        if own is None:
            return subset_ranking(ids, state.query, k)
        self.subsets_reranked += 1
        return subset_ranking(own, state.query, k)


def _write_outputs(ds, split, parts, pipe, outcome: _Outcome, out: Path, run_info, started):
    """Rankings in the official formats, metrics (val), manifest and report."""
    queries = [q for p in parts for q in p.queries]
    files = write_submission(
        ds.name, split, outcome.rankings, queries, out,
        subset_rankings=outcome.subsets if ds.protocol.subset_k else None,
        gallery=_gallery_ids(ds.name, parts), require_all=run_info["complete"],
    )  # fmt: skip
    files.append(out / "queries.jsonl")
    metrics = {}
    if split == "val":
        metrics = score(ds.name, queries, outcome.rankings, outcome.subsets or None)
        metrics |= missing_metric_entries(run_info.get("missing"))
        files.append(_write_json(out / "metrics.json", metrics))
    if ds.protocol.subset_k:  # how many subset rankings a re-ranker ordered itself
        run_info["subset_reranked"] = outcome.subsets_reranked
    run_info |= {
        "queries": len(queries),
        "seconds": round(time.perf_counter() - started, 3),
        "metrics": metrics,
    }
    manifest = build_manifest(run_info, pipe, outcome.totals, ds.annotation_files(split))
    manifest["files"] = [str(f) for f in files] + [str(out / "manifest.json")]
    files.append(write_manifest(out / "manifest.json", manifest))
    files.append(write_report(out, manifest))
    return BenchResult(out, files, metrics, manifest)


# ----------------------------------------------------------------------------- set-up
def _limit(parts: list[Part], limit: int | None) -> list[Part]:
    """The first ``limit`` queries over the parts in order (parts left empty are dropped)."""
    if limit is None:
        return parts
    kept, left = [], limit
    for part in parts:
        if left <= 0:
            break
        kept.append(Part(part.name, part.queries[:left], part.gallery))
        left -= len(kept[-1].queries)
    return kept


def _check_images(ds: BenchDataset, split: str) -> None:
    missing, checked = ds.first_missing(split)
    if missing is not None:
        raise DataError(
            f"{ds.name} {split}: {missing} is missing ({checked - 1} files present before it); "
            f"the official protocol needs the whole gallery. Run `cir data check {ds.name} "
            f"--data-root {ds.data_root}` to see the expected layout."
        )


def _load(pipeline, overrides, preset, ds: BenchDataset, parts: list[Part], encoder):
    """The pipeline with its presets (by default the dataset's and the backbone's), the
    encoder override, and the benchmark's protocol on every retrieve stage."""
    from cir.pipeline import load_pipeline

    first, presets, spec = _with_presets(pipeline, overrides, preset, ds, encoder)
    overrides = [*overrides, *_encoder_overrides(encoder)]
    largest = max((len(p.gallery) for p in parts), default=0)
    protocol = protocol_overrides(first, ds.protocol, largest)
    return load_pipeline(pipeline, [*overrides, *protocol], presets), presets, spec


def _with_presets(pipeline, overrides, preset, ds: BenchDataset, encoder):
    """The pipeline with the presets a run on ``ds`` applies, those presets, and its encoder."""
    from cir.pipeline import load_pipeline
    from cir.pipeline_file import preset_names

    overrides = [*overrides, *_encoder_overrides(encoder)]
    first = load_pipeline(pipeline, overrides)
    spec = first.encoder or _legacy_encoder(first)
    if preset is not None:
        presets = [preset]
    else:
        presets = []
        for scope in ds.preset_scopes(first.presets):
            presets += [p for p in preset_names(first.presets, scope, spec.backbone)
                        if p not in presets]  # fmt: skip
    first = load_pipeline(pipeline, overrides, presets)
    return first, presets, first.encoder or spec


def open_dataset(
    dataset: str,
    data_root,
    pipeline,
    text_rule=None,
    overrides=(),
    preset=None,
    encoder=None,
    options: dict | None = None,
) -> BenchDataset:
    """The benchmark reader, with the query-text rule given, else the one the pipeline (or its
    dataset preset, ``dataset.text_rule``) declares, else the benchmark's default."""
    options = {k: v for k, v in (options or {}).items() if v}
    ds = get_dataset(dataset, data_root, text_rule=text_rule, **options)
    if text_rule is None:
        first = _with_presets(pipeline, overrides, preset, ds, encoder)[0]
        declared = first.dataset.get("text_rule")
        if declared and declared != ds.text_rule:
            ds = get_dataset(dataset, data_root, text_rule=declared, **options)
    return ds


def open_run(dataset, data_root, image_root, pipeline, split: str, encoder=None, overrides=()):
    """What a run with its default presets would use: reader, pipeline, encoder, parts."""
    options = {"image_root": image_root}
    ds = open_dataset(dataset, data_root, pipeline, None, overrides, None, encoder, options)
    pipe, _, spec = _with_presets(pipeline, overrides, None, ds, encoder)
    return ds, pipe, spec, ds.parts(split)


def _encoder_overrides(encoder: str | None) -> list[str]:
    """``--encoder NAME`` replaces the pipeline's model and weights, keeping its preprocessing."""
    if encoder is None:
        return []
    return [f"encoder.model={encoder}", "encoder.pretrained=null"]


def _legacy_encoder(pipe: Any) -> EncoderSpec:
    """A pipeline without an ``encoder:`` section: the first model an encoding stage names."""
    for stage in pipe.stages:
        if stage.name in ("encode_image", "encode_text"):
            model = getattr(stage.params, "model", None)
            if model:
                return EncoderSpec(model, getattr(stage.params, "pretrained", None))
    raise ConfigError(
        f"pipeline {pipe.name!r} declares no `encoder:` and its encoders use the index's; "
        "give the gallery encoder with --encoder, e.g. --encoder ViT-L-14/openai"
    )


def _release_encoder(resources: Resources, spec: EncoderSpec, device) -> None:
    from cir.models.shared import encoder_key

    resources.release(encoder_key(spec, device))


def lifecycle_summary(resources: Resources, since: int = 0) -> dict[str, Any]:
    """Which models a run loaded and released, in order, and the most language models that
    were resident at once (the run's memory plan at work)."""
    events = resources.events[since:]
    return {
        "events": [{"action": e.action, "model": _model_label(e.key)} for e in events],
        "peak_language_models": resources.peak_language_models(since),
    }


def _model_label(key: Any) -> str:
    if isinstance(key, tuple) and key and key[0] == "llm":
        spec = json.loads(key[1])
        return f"{spec.get('backend')}:{spec.get('model') or spec.get('name')}"
    return " ".join(str(part) for part in key) if isinstance(key, tuple) else str(key)


def protocol_overrides(pipe: Any, protocol: Protocol, gallery_size: int) -> list[str]:
    """Overrides that make every ``retrieve`` stage follow the benchmark's protocol.

    The reference is excluded (CIRR) or kept (CIRCO, FashionIQ) whatever the pipeline or its
    preset says; rankings are at least the submission length, and cover the whole gallery
    when a subset ranking (CIRR) is derived from them or the metric needs it (i-CIR); a
    benchmark that ranks each query among its own candidates (GeneCIS) restricts every stage.
    """
    retrieves = [s for s in pipe.stages if s.name == "retrieve"]
    if not retrieves:
        raise ConfigError(
            f"pipeline {pipe.name!r} has no retrieve stage, so it ranks nothing; "
            "benchmarks need a pipeline that ends with `- stage: retrieve`"
        )
    whole = protocol.subset_k or protocol.rank_all
    need = max(gallery_size, protocol.k) if whole else protocol.k
    out = []
    for stage in retrieves:
        flag = "true" if protocol.exclude_reference else "false"
        out.append(f"stages.{stage.instance}.exclude_reference={flag}")
        if protocol.restrict_key:
            out.append(f"stages.{stage.instance}.restrict_key={protocol.restrict_key}")
        if stage.params.k < need:
            out.append(f"stages.{stage.instance}.k={need}")
    return out


def _default_cache_dir() -> Path:
    from cir.cache import default_cache_dir

    return default_cache_dir()


def _content_cache(root: Path):
    from cir.cache import ContentCache

    return ContentCache(root)


def _default_out(dataset: str, split: str, pipeline: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset}-{split}-{pipeline or 'pipeline'}-{stamp}"


# ----------------------------------------------------------------------------- outputs
def _detail(state: QueryState) -> dict[str, Any]:
    """A compact per-query record: texts the stages wrote, the top 10 and the stages' notes
    (e.g. the LDRE ensemble's weights)."""
    ranking = state.ranking
    return {
        "id": state.query.id,
        "text": state.query.text,
        "reference_id": state.query.reference_id,
        "captions": state.captions,
        "targets": state.targets,
        "reasoning": state.reasoning,
        "top10": list(ranking.ids[:10]) if ranking else [],
        "target_id": state.query.extras.get("target_id"),
        "notes": {r.stage: r.notes for r in state.trace if r.notes},
    } | ({"subset": state.data[SUBSET_RANKING]} if SUBSET_RANKING in state.data else {})


def _gallery_ids(dataset: str, parts: list[Part]):
    if dataset in ("fashioniq", "icir"):  # per category, per instance
        return {p.name: set(p.gallery) for p in parts}
    return set(parts[0].gallery) if parts else None


def _write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return path


__all__ = ["BenchResult", "lifecycle_summary", "protocol_overrides", "run_benchmark"]
