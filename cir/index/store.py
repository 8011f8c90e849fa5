"""The on-disk format of a gallery index, written atomically and loaded memory-mapped.

A saved index is a folder::

    manifest.json                   written last; without it the folder is not an index
    ids.<tag>.json                  {"ids": [...], "paths": [...] | null}
    embeddings.<tag>.safetensors    {"embeddings": (N, D) in the storage dtype}
    sidecars.<tag>.safetensors      one tensor per sidecar (optional)
    sidecars.<tag>.json             each sidecar's meta and per-row meta (optional)
    skipped.json                    images a build could not read, with the reason

Every data file is written under a new ``<tag>`` through a temporary name and ``os.replace``;
the manifest (which names the files and their sizes) replaces the previous one last, so a crash
leaves either the old index or the new one, never a mix. Files of older generations are removed
after the new manifest is in place. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
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

FORMAT = "cir-gallery-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SKIPPED = "skipped.json"
_GENERATED = ("ids.", "embeddings.", "sidecars.")

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
    write_atomic(path, json.dumps(value, indent=1, ensure_ascii=False).encode())


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(stored: Stored, directory: str | Path) -> Path:
    """Write ``stored`` into ``directory`` (created if needed) atomically; return the manifest."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    files = {"ids": f"ids.{tag}.json", "embeddings": f"embeddings.{tag}.safetensors"}
    write_json(folder / files["ids"], {"ids": stored.ids, "paths": stored.paths})
    _save_tensors(folder / files["embeddings"], {"embeddings": stored.embeddings})
    side_info = {}
    if stored.sidecars:
        files["sidecars"] = f"sidecars.{tag}.safetensors"
        files["sidecar_meta"] = f"sidecars.{tag}.json"
        _save_tensors(
            folder / files["sidecars"], {n: t for n, (t, _, _) in stored.sidecars.items()}
        )
        metas = {n: {"meta": m, "rows": r} for n, (_, m, r) in stored.sidecars.items()}
        write_json(folder / files["sidecar_meta"], metas)
        side_info = {
            n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, (t, _, _) in stored.sidecars.items()
        }
    write_json(folder / SKIPPED, stored.skipped)
    manifest = {
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
    write_json(folder / MANIFEST, manifest)
    _remove_old_generations(folder, set(files.values()))
    return folder / MANIFEST


def creation_info() -> dict[str, Any]:
    from cir import __version__

    return {
        "cir_version": __version__,
        "torch_version": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _remove_old_generations(folder: Path, keep: set[str]) -> None:
    for path in folder.iterdir():
        if path.name.startswith(_GENERATED) and path.name not in keep and path.is_file():
            with contextlib.suppress(OSError):  # still open elsewhere (Windows): next save
                path.unlink(missing_ok=True)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of the index in ``directory``, checked for format and completeness."""
    folder = Path(directory)
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
            if any(folder.iterdir())
            else "it is empty; build an index with `cir index build FOLDER --model NAME --out DIR`"
        )
        raise DataError(f"{folder} is not a complete gallery index (no {MANIFEST}): {hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); rebuild the index") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a cir gallery index manifest (format {FORMAT!r} expected)")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(
            f"{folder} uses index format {manifest['format_version']}, newer than this cir "
            f"(reads up to {FORMAT_VERSION}); upgrade cir or rebuild the index"
        )
    for name, size in manifest.get("sizes", {}).items():
        file = folder / name
        if not file.is_file() or file.stat().st_size != size:
            state = "missing" if not file.is_file() else f"{file.stat().st_size} bytes, not {size}"
            raise DataError(
                f"{folder} is damaged: {name} is {state}; rebuild the index "
                "(or resume the build that wrote it)"
            )
    return manifest


def load(directory: str | Path, mmap: bool = True) -> tuple[dict[str, Any], Stored]:
    """Read a saved index; with ``mmap`` the tensors stay memory-mapped (read on demand)."""
    folder = Path(directory)
    manifest = read_manifest(folder)
    files = manifest["files"]
    ids_doc = json.loads((folder / files["ids"]).read_text())
    emb = _load_tensors(folder / files["embeddings"], mmap)["embeddings"]
    ids = ids_doc["ids"]
    if len(ids) != manifest["count"] or emb.shape != (manifest["count"], manifest["dim"]):
        raise DataError(
            f"{folder} is inconsistent: manifest says {manifest['count']} x {manifest['dim']}, "
            f"files hold {len(ids)} ids and embeddings {tuple(emb.shape)}; rebuild the index"
        )
    sidecars = {}
    if "sidecars" in files:
        tensors = _load_tensors(folder / files["sidecars"], mmap)
        metas = json.loads((folder / files["sidecar_meta"]).read_text())
        sidecars = {n: (tensors[n], metas[n]["meta"], metas[n]["rows"]) for n in tensors}
    skipped_path = folder / SKIPPED
    skipped = json.loads(skipped_path.read_text()) if skipped_path.is_file() else []
    stored = Stored(
        ids=ids,
        embeddings=emb,
        paths=ids_doc.get("paths"),
        root=manifest.get("root"),
        encoder=manifest.get("encoder"),
        sidecars=sidecars,
        skipped=skipped,
        created=manifest.get("created", {}),
    )
    return manifest, stored


def _load_tensors(path: Path, mmap: bool) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"cannot read {path} ({exc}); rebuild the index") from exc
    return tensors if mmap else {k: v.clone() for k, v in tensors.items()}
