"""The on-disk format of a gallery index, written atomically and loaded memory-mapped.

A saved index is a folder::

    manifest.json                   written last; without it the folder is not an index
    ids.<tag>.json                  {"ids": [...], "paths": [...] | null}
    embeddings.<tag>.safetensors    {"embeddings": (N, D) in the storage dtype}
    sidecars.<tag>.safetensors      one tensor per sidecar (optional)
    sidecars.<tag>.json             each sidecar's meta and per-row meta (optional)
    skipped.json                    images a build could not read, with the reason
    cir-index.json                  the marker: this folder is cir's, and the files cir wrote
    .cir-lock                       locked by the process writing the folder

Every data file is written under a new ``<tag>`` through a temporary name and ``os.replace``;
the manifest (which names the files and their sizes) replaces the previous one last, so a crash
leaves either the old index or the new one, never a mix. Files of older generations are removed
after the new manifest is in place. Nothing is pickled.

The folder is cir's (``cir-index.json`` marks it and lists the data files cir wrote there, see
:mod:`cir.index.folder`): a save never writes into a foreign folder and deletes only files it
listed. Writers hold the folder's lock; readers retry when a save replaced the files they read.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cir.errors import DataError
from cir.index import validate
from cir.index.folder import (
    LOCK,
    MANIFEST,
    MARKER,
    SKIPPED,
    FolderLock,
    claim,
    record,
    remove_owned,
)

FORMAT = "cir-gallery-index"
FORMAT_VERSION = 1
SAVE_WAIT_SECONDS = 30.0
_READ_ATTEMPTS = 20

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise DataError(f"unsupported storage dtype {dtype}; valid: {', '.join(DTYPES)}")


@dataclass
class Stored:
    """Everything a saved index holds, as plain values."""

    ids: list[str]
    embeddings: torch.Tensor
    paths: list[str] | None = None
    root: str | None = None
    encoder: dict[str, Any] | None = None
    sidecars: dict[str, tuple[torch.Tensor, dict[str, Any], dict[str, list]]] = field(
        default_factory=dict
    )
    skipped: list[dict[str, str]] = field(default_factory=list)
    created: dict[str, Any] = field(default_factory=dict)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON (UTF-8; ASCII escapes when it holds undecodable file names)."""
    text = json.dumps(value, indent=1, ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: \udcXX escapes read back as the same text
        data = json.dumps(value, indent=1).encode("ascii")
    write_atomic(path, data)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(stored: Stored, directory: str | Path) -> Path:
    """Write ``stored`` into ``directory`` atomically; return the manifest's path.

    The folder is created if needed and must be cir's (see :mod:`cir.index.folder`): a folder
    that is not empty and not marked as an index is refused. Writers hold the folder's lock.
    """
    folder = Path(directory)
    with FolderLock(folder, wait=SAVE_WAIT_SECONDS, what="save"):
        claim(folder)
        tag = secrets.token_hex(4)
        files = {"ids": f"ids.{tag}.json", "embeddings": f"embeddings.{tag}.safetensors"}
        if stored.sidecars:
            files["sidecars"] = f"sidecars.{tag}.safetensors"
            files["sidecar_meta"] = f"sidecars.{tag}.json"
        record(folder, files.values())
        _write_files(folder, files, stored)
        write_json(folder / MANIFEST, _manifest(folder, files, stored))
        remove_owned(folder, keep=set(files.values()))
    return folder / MANIFEST


def _write_files(folder: Path, files: dict[str, str], stored: Stored) -> None:
    write_json(folder / files["ids"], {"ids": stored.ids, "paths": stored.paths})
    _save_tensors(folder / files["embeddings"], {"embeddings": stored.embeddings})
    if stored.sidecars:
        _save_tensors(
            folder / files["sidecars"], {n: t for n, (t, _, _) in stored.sidecars.items()}
        )
        metas = {n: {"meta": m, "rows": r} for n, (_, m, r) in stored.sidecars.items()}
        write_json(folder / files["sidecar_meta"], metas)
    write_json(folder / SKIPPED, stored.skipped)


def _manifest(folder: Path, files: dict[str, str], stored: Stored) -> dict[str, Any]:
    side_info = {
        n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for n, (t, _, _) in stored.sidecars.items()
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "count": len(stored.ids),
        "dim": int(stored.embeddings.shape[1]),
        "dtype": dtype_name(stored.embeddings.dtype),
        "normalized": True,
        "encoder": stored.encoder,
        "preprocessing": (stored.encoder or {}).get("preprocessing"),
        "root": stored.root,
        "files": files,
        "sizes": {name: (folder / name).stat().st_size for name in files.values()},
        "sidecars": side_info,
        "skipped": len(stored.skipped),
        "created": stored.created or creation_info(),
    }


def creation_info() -> dict[str, Any]:
    from cir import __version__

    return {
        "cir_version": __version__,
        "torch_version": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of the index in ``directory``, checked for format and completeness."""
    folder = Path(directory)
    for _ in range(_READ_ATTEMPTS):
        manifest = _read_manifest_once(folder)
        missing = _first_bad_file(folder, manifest)
        if missing is None:
            return manifest
        if _read_manifest_once(folder) == manifest:  # not a save in progress: really damaged
            raise DataError(
                f"{folder} is damaged: {missing}; rebuild the index "
                "(or resume the build that wrote it)"
            )
        time.sleep(0.01)
    raise DataError(f"{folder} kept changing while it was read; is a process rewriting it?")


def _read_manifest_once(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise DataError(
            f"no gallery index at {folder}: the folder does not exist; "
            "build one with `cir index build FOLDER --model NAME --out DIR`"
        )
    path = folder / MANIFEST
    if not path.is_file():
        hint = (
            "a build or save into it was interrupted; finish it with "
            "`cir index build ... --resume` (or GalleryIndex.build(..., resume=True)) or rebuild it"
            if any(p.name not in (LOCK, MARKER) for p in folder.iterdir())
            else "it is empty; build an index with `cir index build FOLDER --model NAME --out DIR`"
        )
        raise DataError(f"{folder} is not a complete gallery index (no {MANIFEST}): {hint}")
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a cir gallery index manifest (format {FORMAT!r} expected)")
    validate.check_manifest(manifest, path, FORMAT_VERSION)
    return manifest


def _first_bad_file(folder: Path, manifest: dict[str, Any]) -> str | None:
    for name, size in manifest["sizes"].items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} is {actual} bytes, not {size}"
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{path} is not valid JSON ({_short(exc)}); rebuild the index") from None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def load(directory: str | Path, mmap: bool = True) -> tuple[dict[str, Any], Stored]:
    """Read a saved index; with ``mmap`` the tensors stay memory-mapped (read on demand).

    A save running at the same time (in another process) replaces the files under the reader:
    the read is then retried with the new manifest, so a healthy index never looks damaged.
    """
    folder = Path(directory)
    for _ in range(_READ_ATTEMPTS):
        manifest = read_manifest(folder)
        try:
            return manifest, _load_files(folder, manifest, mmap)
        except FileNotFoundError:
            time.sleep(0.01)  # a newer generation replaced this one: read the new manifest
    raise DataError(f"{folder} kept changing while it was read; is a process rewriting it?")


def _load_files(folder: Path, manifest: dict[str, Any], mmap: bool) -> Stored:
    files = manifest["files"]
    ids_path = folder / files["ids"]
    ids, paths = validate.check_ids_doc(_read_json(ids_path), manifest, ids_path)
    emb_path = folder / files["embeddings"]
    emb = validate.check_embeddings(_load_tensors(emb_path, mmap), manifest, emb_path)
    validate.check_rows(emb, ids, emb_path, validate.sampled_positions(len(ids)))
    sidecars = {}
    if "sidecars" in files:
        meta_path = folder / files["sidecar_meta"]
        tensors = _load_tensors(folder / files["sidecars"], mmap)
        sidecars = validate.check_sidecars(tensors, _read_json(meta_path), manifest, meta_path)
    skipped_path = folder / SKIPPED
    skipped = (
        validate.check_skipped(_read_json(skipped_path), skipped_path)
        if skipped_path.is_file()
        else []
    )
    return Stored(
        ids=ids,
        embeddings=emb,
        paths=paths,
        root=manifest.get("root"),
        encoder=manifest.get("encoder"),
        sidecars=sidecars,
        skipped=skipped,
        created=manifest.get("created", {}),
    )


def _load_tensors(path: Path, mmap: bool) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        if not path.is_file():  # replaced by a concurrent save while opening it
            raise FileNotFoundError(path) from None
        raise DataError(f"cannot read {path} ({_short(exc)}); rebuild the index") from exc
    return tensors if mmap else {k: v.clone() for k, v in tensors.items()}
