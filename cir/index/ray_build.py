"""The encoding loop of a gallery build, run on a Ray cluster with Ray Data.

Decoding and preprocessing run as parallel Ray tasks; the model runs in a pool of encoder actors
(one per GPU, or per CPU slot; see :func:`cir.ray_engine.model_pool`). The driver receives the
encoded rows and writes them with the same shard writer as a local build (``out/build/shard-*``),
so resuming, the final merge and the saved index are exactly those of
:func:`cir.index.build.build_index`, which calls this when given ``ray=``.

Images are cut into the batches a local build would form (``batch_size`` consecutive images of
the same work list), and each batch is encoded in one model call: with the same device and dtype
the embeddings equal a local build's bit for bit.

Example:
    >>> build_index("photos", encoder, "photos_index", ray="auto")  # on the cluster
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import torch

from cir import ray_engine
from cir.index.scan import Item

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def encode(todo: list[Item], encoder: Any, shards: Any, bar: Any, options: dict) -> None:
    """Encode ``todo`` on Ray into ``shards``, flushing one shard as soon as it is complete.

    ``options`` holds ``ray``, ``workers``, ``batch_size``, ``shard_size``, ``max_pixels`` and
    ``interrupt_after_shards`` (see :func:`cir.index.build.build_index`).
    """
    from cir.index.build import BuildInterrupted

    data = ray_engine.connect(options["ray"])
    batch_size = options["batch_size"]
    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    if not chunks:
        return
    per_shard = max(1, round(options["shard_size"] / batch_size))
    pool = ray_engine.model_pool(options["workers"], options.get("device"))
    encoded = _pipeline(data, chunks, encoder, pool, options["max_pixels"])
    waiting: dict[int, dict[int, tuple]] = {}
    for row in ray_engine.rows_of(encoded):
        chunk = int(row["chunk"])
        shard = chunk // per_shard
        waiting.setdefault(shard, {})[chunk] = _received(row, chunks[chunk])
        bar.update(len(chunks[chunk]))
        expected = min(per_shard, len(chunks) - shard * per_shard)
        if len(waiting[shard]) < expected:
            continue
        _write(shards, waiting.pop(shard))
        if options["interrupt_after_shards"] == shards.written:
            raise BuildInterrupted(f"stopped after {shards.written} shards (testing hook)")


def _pipeline(data: Any, chunks: list[list[Item]], encoder: Any, pool: Any, max_pixels) -> Any:
    """The Ray dataset: one row per batch of images, decoded by tasks, encoded by the actors."""
    rows = [
        {"chunk": c, "items": json.dumps([vars(it) for it in chunk])}
        for c, chunk in enumerate(chunks)
    ]
    decode = partial(_decode, preprocess=encoder.preprocess, max_pixels=max_pixels)
    return (
        data.from_items(rows, override_num_blocks=len(rows))
        # Its own operator (Ray Data would otherwise fuse it into the actors on CPU-only
        # clusters, and the model would wait for every decode): tasks decode beside the actors.
        .map(decode, num_cpus=1, ray_remote_args_fn=_one_cpu)
        .map_batches(
            _EncoderActor,
            batch_size=1,
            fn_constructor_kwargs=_actor_args(encoder, pool),
            **pool.map_options(),
        )
    )


def _one_cpu() -> dict[str, Any]:
    return {"num_cpus": 1}


def _actor_args(encoder: Any, pool: ray_engine.Pool) -> dict[str, Any]:
    """How an actor rebuilds the driver's encoder: same spec and preprocessing; same dtype when
    it runs on the same kind of device, else that device's default."""
    same_device = torch.device(encoder.device).type == pool.device
    return {
        "spec": encoder.identity.spec,
        "preprocessing": encoder.identity.preprocessing,
        "device": pool.device,
        "dtype": _DTYPE_NAMES.get(encoder.dtype) if same_device else None,
        "key": encoder.identity.key,
    }


def _decode(row: dict[str, Any], preprocess: Any, max_pixels: int | None) -> dict[str, Any]:
    """One batch of images decoded and preprocessed (a Ray task); bad files keep their reason."""
    from cir.index.build import _collate, _Images

    torch.set_num_threads(1)  # as in a DataLoader worker: the cores are the model's
    items = [Item(**entry) for entry in json.loads(row["items"])]
    images = _Images(items, preprocess, max_pixels)
    good, pixels, bad = _collate([images[n] for n in range(len(items))])
    data, shape = ray_engine.pack(pixels) if pixels is not None else (b"", "[0]")
    return {"chunk": row["chunk"], "pixels": data, "shape": shape, **_lists(good, bad)}


def _lists(good: list[int], bad: list[tuple[int, str]]) -> dict[str, str]:
    return {"good": json.dumps(good), "bad": json.dumps(bad)}


class _EncoderActor:
    """A Ray actor holding one encoder; each call embeds one decoded batch."""

    def __init__(self, spec: str, preprocessing: str, device: str, dtype: str | None, key: str):
        from cir.errors import ConfigError
        from cir.models import load_encoder

        self.encoder = load_encoder(spec, device=device, dtype=dtype, preprocessing=preprocessing)
        if self.encoder.identity.key != key:
            raise ConfigError(f"the Ray worker loaded {self.encoder.identity.key}, not {key}")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows, shapes = [], []
        for data, shape, good in zip(batch["pixels"], batch["shape"], batch["good"], strict=True):
            encoded = (b"", "[0]")
            if json.loads(good):
                pixels = ray_engine.unpack(data, shape)
                encoded = ray_engine.pack(self.encoder.encode_pixels(pixels))
            rows.append(encoded[0])
            shapes.append(encoded[1])
        kept = {column: list(batch[column]) for column in ("chunk", "good", "bad")}
        return {**kept, "rows": rows, "shape": shapes}


def _received(row: dict[str, Any], chunk: list[Item]) -> tuple:
    good = json.loads(row["good"])
    rows = ray_engine.unpack(row["rows"], row["shape"]) if good else None
    bad = [(chunk[n], reason) for n, reason in json.loads(row["bad"])]
    return [chunk[n] for n in good], rows, bad


def _write(shards: Any, chunks: dict[int, tuple]) -> None:
    for chunk in sorted(chunks):
        items, rows, bad = chunks[chunk]
        if rows is not None:
            shards.add_rows(items, rows)
        shards.add_skips(bad)
    shards.flush()
