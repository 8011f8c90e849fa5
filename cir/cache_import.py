"""Reading a shared cache export as hostile input: streamed, bounded, every value checked.

A cache file from someone else decides what a run computes, so nothing in it is trusted:

- it is read line by line (never whole), each line at most :data:`MAX_LINE_BYTES`, and a gzip
  file that expands more than :data:`MAX_EXPANSION` times its size (past 64 MiB) is refused;
- every entry's key must be the hash of its parts, its kind known, and its value of that kind's
  shape: texts for captions and LLM answers (strings of bounded length), and for embeddings one
  finite floating-point tensor of at most two dimensions and bounded size;
- entries are written in one transaction, so a refused file leaves the cache as it was, and each
  is marked with the sha256 of the file it came from (runs report how many outputs came from
  which import);
- :func:`verify_sample` recomputes a sample of text embeddings with their encoder, when it can be
  loaded, and names the entries whose values do not match.

Example:
    >>> for entry in read_export(Path("shared.jsonl.gz")):
    ...     print(entry["key"], entry["kind"])
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cir.errors import DataError

EXPORT_FORMAT = "cir-cache"
EXPORT_VERSION = 1
MAX_LINE_BYTES = 8 * 2**20
MAX_EXPANSION = 100
MAX_TEXTS = 1024
MAX_TEXT_CHARS = 65536
MAX_TENSOR_VALUES = 2**22
TENSOR_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class ImportReport:
    """What an import added, the ``import:<sha256>`` mark of its entries, entries verified."""

    added: int
    source: str
    verified: int = 0

    def __int__(self) -> int:
        return self.added

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int):
            return self.added == other
        return isinstance(other, ImportReport) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]


def read_export(path: Path) -> Iterator[dict[str, Any]]:
    """The checked entries of an export file, one at a time (``blob`` holds the stored value).

    Raises:
        DataError: the file is missing, not an export, damaged, a compression bomb, or holds an
            entry whose key, kind or value is wrong (the message names the line).
    """
    if not path.is_file():
        raise DataError(f"cache file {str(path)!r} does not exist")
    count = 0
    lines = _lines(path)
    header = _json_line(next(lines, b""), path, 1)
    if header.get("format") != EXPORT_FORMAT or header.get("version") != EXPORT_VERSION:
        raise DataError(
            f"{path} is not a cir cache export (format {EXPORT_FORMAT!r} "
            f"version {EXPORT_VERSION}); make one with `cir cache export FILE`"
        )
    for number, raw in enumerate(lines, start=2):
        if raw.strip():
            count += 1
            yield check_entry(_json_line(raw, path, number), path, number)
    if count != header.get("entries"):
        raise DataError(
            f"{path}: header promises {header.get('entries')} entries, file has {count}"
        )


def _lines(path: Path) -> Iterator[bytes]:
    size = max(path.stat().st_size, 1)
    read = 0
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as src:
            while raw := src.readline(MAX_LINE_BYTES + 1):
                read += len(raw)
                if len(raw) > MAX_LINE_BYTES:
                    raise DataError(
                        f"{path}: a line is longer than {MAX_LINE_BYTES} bytes; refused"
                    )
                if read > 64 * 2**20 and read > MAX_EXPANSION * size:
                    raise DataError(
                        f"{path} expands to more than {MAX_EXPANSION} times its size "
                        f"({read} bytes from {size}); a compression bomb? refused"
                    )
                yield raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read cache file {str(path)!r}: {exc}") from None


def _json_line(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise DataError(f"{path}, line {number}: not a JSON object; the file is damaged")
    return value


def check_entry(line: dict[str, Any], path: Path, number: int) -> dict[str, Any]:
    """One export line checked and turned into a row (``blob`` is the value as stored)."""
    from cir.cache import make_key

    where = f"{path}, line {number}"
    try:
        parts, encoding, kind = line["parts"], line["encoding"], line["kind"]
        if not isinstance(parts, dict) or make_key(parts) != line["key"]:
            raise DataError(f"{where}: key does not match its parts; refused")
        if not isinstance(kind, str) or not kind.isidentifier() or len(kind) > 40:
            raise DataError(f"{where}: unknown kind {kind!r}")
        blob = _checked_value(kind, encoding, line["value"], where)
        created = float(line.get("created", time.time()))
        if not math.isfinite(created):
            raise ValueError("created is not a finite time")
        stage, model = str(parts.get("stage", "")), str(parts.get("model", ""))
        return {**line, "stage": stage, "model": model, "blob": blob, "created": created}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: malformed entry ({exc})") from None


def _checked_value(kind: str, encoding: Any, value: Any, where: str) -> bytes:
    if kind == "embedding":
        if encoding != "safetensors" or not isinstance(value, str):
            raise DataError(f"{where}: an embedding must be a base64 safetensors value")
        blob = base64.b64decode(value, validate=True)
        check_tensor(blob, where)
        return blob
    if encoding == "png":  # a drawn picture (imagine stages): a sane PNG and nothing else
        from cir.cache import _png_image

        blob = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        try:
            _png_image(blob)
        except Exception as exc:  # Pillow raises its own error types
            raise DataError(f"{where}: png value does not load ({exc})") from None
        return blob
    if encoding != "json":
        raise DataError(f"{where}: a {kind} value must be JSON, not {encoding!r}")
    check_texts(value, where)
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def check_texts(value: Any, where: str) -> None:
    """A generated value: ``{"texts": [str, ...], "logprobs": None | [...]}``, bounded."""
    texts = value.get("texts") if isinstance(value, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError(f"{where}: the value must hold 'texts', a list of strings")
    if len(texts) > MAX_TEXTS or any(len(t) > MAX_TEXT_CHARS for t in texts):
        raise DataError(
            f"{where}: more than {MAX_TEXTS} texts or a text over {MAX_TEXT_CHARS} characters"
        )
    logprobs = value.get("logprobs")
    ok = logprobs is None or (
        isinstance(logprobs, list)
        and len(logprobs) <= len(texts)
        and all(
            row is None or (isinstance(row, dict) and all(_finite_number(v) for v in row.values()))
            for row in logprobs
        )
    )
    if not ok:
        raise DataError(f"{where}: 'logprobs' must be null or one {{token: number}} per text")


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_tensor(blob: bytes, where: str) -> None:
    """One tensor named ``value``: floating point, 1 or 2 dimensions, bounded, finite."""
    import torch
    from safetensors.torch import load as load_tensors

    header = _safetensors_header(blob, where)
    if set(header) - {"__metadata__"} != {"value"}:
        raise DataError(f"{where}: an embedding must be one tensor named 'value'")
    info = header["value"]
    shape = info.get("shape") if isinstance(info, dict) else None
    if info.get("dtype") not in TENSOR_DTYPES or not isinstance(shape, list):
        raise DataError(f"{where}: embedding of dtype {info.get('dtype')!r}; valid: float")
    if not 1 <= len(shape) <= 2 or math.prod(shape) > MAX_TENSOR_VALUES or 0 in shape:
        raise DataError(f"{where}: embedding of shape {shape}; expected (D,) or (N, D), bounded")
    try:
        tensor = load_tensors(blob)["value"]
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"{where}: tensor value does not load ({exc})") from None
    if not bool(torch.isfinite(tensor).all()):
        raise DataError(f"{where}: embedding holds NaN or inf values")


def _safetensors_header(blob: bytes, where: str) -> dict[str, Any]:
    size = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else -1
    try:
        if not 0 < size <= min(len(blob) - 8, 1 << 20):
            raise ValueError("bad header length")
        header = json.loads(blob[8 : 8 + size])
    except (ValueError, RecursionError):
        raise DataError(f"{where}: tensor value does not load (damaged header)") from None
    if not isinstance(header, dict):
        raise DataError(f"{where}: tensor value does not load (damaged header)")
    return header


def verify_sample(entries: list[dict[str, Any]], sample: int) -> tuple[int, list[str]]:
    """Recompute up to ``sample`` text embeddings with their encoder (when it loads).

    Returns:
        How many were checked, and the keys of those whose stored value differs.
    """
    import torch
    from safetensors.torch import load as load_tensors

    from cir.errors import CirError
    from cir.models import load_encoder

    checkable = [e for e in entries if e["kind"] == "embedding" and _text_parts(e["parts"])]
    checked, wrong, encoders = 0, [], {}
    for entry in checkable[:sample]:
        spec, text, normalize = _text_parts(entry["parts"])
        try:
            encoder = encoders.get(spec) or encoders.setdefault(spec, load_encoder(spec))
        except (CirError, OSError, ValueError):
            continue  # the model is not available here: this entry cannot be checked
        fresh = encoder.encode_texts([text], normalize=normalize)[0].float()
        stored = load_tensors(entry["blob"])["value"].float().flatten()
        checked += 1
        if stored.shape != fresh.shape or torch.cosine_similarity(stored, fresh, dim=0) < 0.99:
            wrong.append(entry["key"])
    return checked, wrong


def _text_parts(parts: dict[str, Any]) -> tuple[str, str, bool] | None:
    encoder = parts.get("encoder")
    text = parts.get("text")
    if not isinstance(encoder, dict) or not isinstance(encoder.get("spec"), str):
        return None
    if not isinstance(text, str):
        return None
    return encoder["spec"], text, bool(parts.get("normalize", True))


def write_export(
    path: Path, count: int, rows: Iterator[dict[str, Any]], stage: str | None, kind: str | None
) -> int:
    """Write ``rows`` (cache entries with their stored ``blob``) as an export file."""
    import os

    header = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "entries": count,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "filter": {"stage": stage, "kind": kind},
        "about": "cir content cache: each line's key is the sha256 of its canonical `parts`",
    }
    tmp = path.with_name(path.name + ".partial")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(tmp, "wt", encoding="utf-8") as out:
        out.write(json.dumps(header) + "\n")
        for row in rows:
            blob = row.pop("blob")
            row["value"] = (
                base64.b64encode(blob).decode("ascii")
                if row["encoding"] in ("safetensors", "png")
                else json.loads(blob.decode("utf-8"))
            )
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return count
