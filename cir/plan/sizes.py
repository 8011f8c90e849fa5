"""What one model needs, from its metadata alone: parameters, weight bytes, a minimal KV cache.

Language models and CLIP encoders are sized from ``config.json`` and safetensors metadata (or the
architecture built on the ``meta`` device); diffusers pipelines from ``model_index.json`` and
their components' configs. Nothing here loads weights.

Example:
    >>> estimate(ModelUse.language(key, {"backend": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"},
    ...                            "llm"), "cuda").weight_bytes
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cir.errors import ConfigError
from cir.resources import ModelUse

_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2}
_SAFETENSORS_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
GiB = 2**30


@dataclass
class ModelEstimate:
    """What one model needs: parameters, bytes of weights and of a minimal KV cache."""

    name: str
    kind: str
    params: int | None
    dtype: str
    weight_bytes: int | None
    kv_bytes: int = 0
    source: str = ""
    note: str = ""

    @property
    def total(self) -> int:
        return (self.weight_bytes or 0) + self.kv_bytes


def estimate(use: ModelUse, device: str) -> ModelEstimate:
    """Parameters and memory of one model from its metadata (never its weights)."""
    if use.kind == "encoder":
        return _estimate_encoder(use, device)
    if use.kind == "generator":
        return _estimate_generator(use, device)
    spec = use.spec
    if spec.get("backend") in ("openai", "scripted"):
        where = "served remotely" if spec.get("backend") == "openai" else "scripted"
        return ModelEstimate(use.name, "language", 0, "-", 0, 0, where, "no local memory")
    try:
        folder = _config_folder(use.name, spec.get("revision"))
        config = json.loads((folder / "config.json").read_text())
    except (ConfigError, OSError, ValueError) as exc:
        return ModelEstimate(use.name, "language", None, "?", None, 0, f"no config: {exc}")
    params, source = _param_count(folder, config)
    dtype = _language_dtype(spec, config, device)
    kv = _kv_bytes(config, spec, dtype)
    weight = params * _BYTES[dtype] if params is not None else None
    return ModelEstimate(use.name, "language", params, dtype, weight, kv, source)


def _config_folder(model: str, revision: str | None) -> Path:
    """A folder holding the model's ``config.json``: the model's own, or the hub cache's."""
    local = Path(model).expanduser()
    if (local / "config.json").is_file():
        return local
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json", revision=revision)
    except Exception as exc:  # the hub client raises many kinds; all mean "not reachable"
        raise ConfigError(
            f"cannot read the config of {model!r} ({type(exc).__name__}: {exc}); give a local "
            "folder, or put the model's config.json in the Hugging Face cache"
        ) from None
    return Path(path).parent


def _param_count(folder: Path, config: dict[str, Any]) -> tuple[int | None, str]:
    """From a safetensors index or header when present, else the architecture on ``meta``."""
    counted = _safetensors_params(folder)
    if counted is not None:
        return counted, "safetensors metadata"
    try:
        return _meta_params(folder), "config (meta device)"
    except Exception as exc:  # unknown architectures: say so instead of failing the plan
        return None, f"unknown ({type(exc).__name__})"


def _safetensors_params(folder: Path) -> int | None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            if size > 100 * 2**20:
                return None
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def _meta_params(folder: Path) -> int:
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    names = [*(config.architectures or []), "AutoModel"]
    cls = next(getattr(transformers, n) for n in names if hasattr(transformers, n))
    with torch.device("meta"):
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    return sum(p.numel() for p in model.parameters())


def _language_dtype(spec: dict[str, Any], config: dict[str, Any], device: str) -> str:
    dtype = str(spec.get("dtype", "auto"))
    if dtype != "auto":
        return dtype
    if device == "cpu":
        return "float32"
    stored = config.get("torch_dtype") or config.get("dtype") or "float16"
    return stored if stored in _BYTES else "float16"


def _kv_bytes(config: dict[str, Any], spec: dict[str, Any], dtype: str) -> int:
    """KV cache for one sequence of ``max_model_len`` tokens (vLLM's minimum), or the cache
    size a spec fixes with ``kv_cache_memory_bytes``."""
    if spec.get("kv_cache_memory_bytes"):
        return int(spec["kv_cache_memory_bytes"])
    text = config.get("text_config") or config
    layers = text.get("num_hidden_layers")
    heads = text.get("num_attention_heads")
    if not layers or not heads or "hidden_size" not in text:
        return 0
    kv_heads = text.get("num_key_value_heads", heads)
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    tokens = spec.get("max_model_len") or min(text.get("max_position_embeddings", 4096), 32768)
    seqs = spec.get("max_num_seqs") or 1
    return 2 * layers * kv_heads * head_dim * _BYTES[dtype] * tokens * seqs


def _estimate_encoder(use: ModelUse, device: str) -> ModelEstimate:
    dtype = use.spec.get("dtype") or ("float16" if device != "cpu" else "float32")
    dtype = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(dtype, dtype)
    try:
        params, dim = _encoder_params(use.spec["model"], use.spec.get("pretrained"))
    except Exception as exc:  # unknown names and unreadable folders: a plan row that says so
        return ModelEstimate(use.name, "encoder", None, dtype, None, 0, f"unknown ({exc})")
    note = f"{dim}-d embeddings"
    return ModelEstimate(
        use.name, "encoder", params, dtype, params * _BYTES[dtype], 0, "config", note
    )


def _encoder_params(model: str, pretrained: str | None) -> tuple[int, int]:
    import torch

    from cir.models.spec import parse_spec

    parsed = parse_spec(model, pretrained)
    if parsed.family == "hf":
        folder = _config_folder(parsed.model, None)
        params = _param_count(folder, {})[0]
        config = json.loads((folder / "config.json").read_text())
        return params or 0, int(config.get("projection_dim", 0))
    import logging

    import open_clip

    quiet = logging.getLogger()
    level, quiet.level = quiet.level, logging.ERROR  # "no pretrained weights": none are wanted
    try:
        with torch.device("meta"):
            net = open_clip.create_model(parsed.open_clip_name, pretrained=None, device="meta")
    finally:
        quiet.setLevel(level)
    dim = int(getattr(net, "text_projection", torch.empty(0, 0)).shape[-1] or 0)
    return sum(p.numel() for p in net.parameters()), dim


def _estimate_generator(use: ModelUse, device: str) -> ModelEstimate:
    """A diffusers pipeline: the weights of its components (those with a ``config.json``).

    With ``offload: model`` on a GPU only the largest component is resident at a time; with
    ``sequential`` the weights stream from the host layer by layer. Activations, which grow with
    the picture's size and the batch, are not counted.
    """
    spec = use.spec
    dtype = _generator_dtype(str(spec.get("dtype", "auto")), device)
    try:
        components = _pipeline_components(use.name, spec.get("revision"))
    except (ConfigError, OSError, ValueError) as exc:
        return ModelEstimate(use.name, "generator", None, dtype, None, 0, f"no model index: {exc}")
    known = {name: n for name, n in components.items() if n is not None}
    params = sum(known.values()) if len(known) == len(components) else None
    offload = str(spec.get("offload", "none")) if device != "cpu" else "none"
    resident = {"none": params, "model": max(known.values(), default=None), "sequential": 0}
    count = resident[offload]
    weight = count * _BYTES[dtype] if count is not None else None
    note = f"{len(components)} components" + ("" if offload == "none" else f", offload {offload}")
    return ModelEstimate(use.name, "generator", params, dtype, weight, 0, "model_index.json", note)


def _generator_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "float32" if device == "cpu" else "bfloat16"


def _pipeline_components(model: str, revision: str | None) -> dict[str, int | None]:
    """Parameters of each weighted component named by the pipeline's ``model_index.json``."""
    folder = _pipeline_file(model, "model_index.json", revision).parent
    index = json.loads((folder / "model_index.json").read_text())
    out: dict[str, int | None] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry:
            continue
        try:
            config_path = _pipeline_file(model, f"{name}/config.json", revision)
        except ConfigError:
            continue  # schedulers, tokenizers and processors have no weights
        out[name] = _component_params(config_path.parent, entry[0], entry[1])
    return out


def _pipeline_file(model: str, name: str, revision: str | None) -> Path:
    local = Path(model).expanduser() / name
    if local.is_file():
        return local
    if Path(model).expanduser().is_dir():
        raise ConfigError(f"{model} has no {name}")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model, name, revision=revision))
    except Exception as exc:  # the hub client raises many kinds; all mean "not reachable"
        raise ConfigError(f"cannot read {name} of {model!r} ({type(exc).__name__})") from None


def _component_params(folder: Path, library: str, class_name: str) -> int | None:
    counted = _safetensors_params(folder)
    if counted is not None:
        return counted
    try:
        import torch

        module = __import__(library)
        config = json.loads((folder / "config.json").read_text())
        if library == "transformers":
            return _meta_params(folder)
        with torch.device("meta"):
            net = getattr(module, class_name).from_config(config)
        return sum(p.numel() for p in net.parameters())
    except Exception:  # an unknown class or library: the plan says the size is unknown
        return None
