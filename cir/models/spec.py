"""Encoder names as users type them, resolved to a family and a source without loading weights.

Forms: open_clip ``ViT-B-32/openai`` (or ``ViT-B-32`` with ``pretrained="openai"``),
``hf-hub:org/repo``, ``local-dir:/path``; Hugging Face CLIP/SigLIP ``org/repo``, ``hf:org/repo`` or
a local directory holding ``config.json``.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cir.errors import ConfigError

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
SPEC_HELP = (
    "Encoder names are formed as: open_clip 'ViT-B-32/openai' (or 'ViT-B-32' with "
    "pretrained='openai'), 'hf-hub:org/repo', 'local-dir:/path/to/open_clip_dir'; Hugging Face "
    "CLIP/SigLIP 'openai/clip-vit-base-patch32', 'hf:org/repo' or a local directory holding "
    "config.json. open_clip names and tags: open_clip.list_pretrained()."
)


@dataclass(frozen=True)
class ParsedSpec:
    """A model name resolved to a family and a source, before anything is loaded.

    ``source`` is ``"builtin"``, ``"hf-hub"`` or ``"local-dir"`` for open_clip and ``"hub"`` or
    ``"local"`` for Hugging Face models.
    """

    family: str
    source: str
    model: str
    pretrained: str | None = None

    @property
    def spec(self) -> str:
        """The canonical string that parses back to this spec."""
        if self.family == "hf":
            return self.model if self.source == "local" else f"hf:{self.model}"
        if self.source == "builtin":
            return f"{self.model}/{self.pretrained}" if self.pretrained else self.model
        return f"{self.source}:{self.model}"

    @property
    def open_clip_name(self) -> str:
        """The model name as ``open_clip.create_model`` expects it."""
        return self.model if self.source == "builtin" else f"{self.source}:{self.model}"


def _open_clip_names() -> dict[str, str]:
    """Lower-cased open_clip architecture names mapped to their exact spelling."""
    import open_clip

    return {name.lower(): name for name in open_clip.list_models()}


def _looks_like_path(text: str) -> bool:
    windows_drive = re.match(r"^[A-Za-z]:[\\/]", text)
    return text.startswith(("/", "./", "../", "~", "\\")) or bool(windows_drive)


def _local_spec(path: Path, given: str) -> ParsedSpec:
    """A model folder: open_clip (``open_clip_config.json``) or transformers (``config.json``)."""
    if not path.exists():
        raise ConfigError(f"encoder path {given!r} does not exist. {SPEC_HELP}")
    if not path.is_dir():
        raise ConfigError(
            f"encoder path {given!r} is a file; pass the model directory (holding "
            "open_clip_config.json or config.json), or an open_clip checkpoint file as "
            "pretrained= next to an architecture name."
        )
    resolved = str(path.resolve())
    if (path / "open_clip_config.json").is_file():
        return ParsedSpec("open_clip", "local-dir", resolved)
    if (path / "config.json").is_file():
        return ParsedSpec("hf", "local", resolved)
    raise ConfigError(
        f"encoder directory {given!r} has neither open_clip_config.json (open_clip) nor "
        f"config.json (Hugging Face transformers). {SPEC_HELP}"
    )


def _builtin_spec(name: str, pretrained: str | None) -> ParsedSpec:
    """An open_clip architecture name plus a weights tag or checkpoint file, both checked."""
    import open_clip

    if not pretrained:
        tags = open_clip.list_pretrained_tags_by_model(name)
        listed = ", ".join(tags) or "none (pass a checkpoint path)"
        raise ConfigError(
            f"open_clip model {name!r} needs pretrained weights: give a tag as '{name}/<tag>' or "
            f"pretrained='<tag>'. Tags for {name}: {listed}."
        )
    if open_clip.get_pretrained_cfg(name, pretrained):
        return ParsedSpec("open_clip", "builtin", name, pretrained)
    checkpoint = Path(pretrained).expanduser()
    if checkpoint.is_file():
        return ParsedSpec("open_clip", "builtin", name, str(checkpoint.resolve()))
    tags = open_clip.list_pretrained_tags_by_model(name)
    close = difflib.get_close_matches(pretrained, tags, n=3)
    hint = f" Did you mean {', '.join(repr(t) for t in close)}?" if close else ""
    raise ConfigError(
        f"unknown pretrained tag {pretrained!r} for open_clip model {name!r}.{hint} "
        f"Valid tags: {', '.join(tags) or 'none'}; or pass an existing checkpoint file path."
    )


def _unknown_name(spec: str) -> ConfigError:
    names = _open_clip_names()
    head = spec.partition("/")[0].lower()
    close = difflib.get_close_matches(head, list(names), n=5, cutoff=0.6)
    hint = f" Close open_clip names: {', '.join(names[c] for c in close)}." if close else ""
    return ConfigError(f"unknown encoder {spec!r}.{hint} {SPEC_HELP}")


def _typo_of_open_clip(spec: str) -> bool:
    """``ViT-L-15/openai``: an open_clip weights tag after a near miss of an architecture name."""
    import open_clip

    head, _, tail = spec.partition("/")
    tags = {tag.lower() for _, tag in open_clip.list_pretrained()}
    close = difflib.get_close_matches(head.lower(), list(_open_clip_names()), n=1, cutoff=0.8)
    return tail.lower() in tags and bool(close)


def _split_open_clip(spec: str) -> tuple[str, str | None] | None:
    """``ViT-B-32/openai`` → (``ViT-B-32``, ``openai``) if the head is an open_clip name."""
    names = _open_clip_names()
    head, sep, tail = spec.partition("/")
    if head.lower() in names:
        return names[head.lower()], (tail or None) if sep else None
    return None


def parse_spec(spec: str, pretrained: str | None = None) -> ParsedSpec:
    """Resolve a model name to a family and a source, without loading weights.

    Args:
        spec: the model name as a user types it (see ``SPEC_HELP``).
        pretrained: open_clip weights tag or checkpoint file, for a bare architecture name.

    Returns:
        The parsed spec; ``.spec`` is its canonical string.

    Raises:
        ConfigError: the name matches no known form, a local path does not exist, or an open_clip
            tag is unknown for the architecture.

    Example:
        >>> parse_spec("ViT-B-32/openai")
        ParsedSpec(family='open_clip', source='builtin', model='ViT-B-32', pretrained='openai')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"encoder name must be a non-empty string, got {spec!r}. {SPEC_HELP}")
    spec = spec.strip()
    schema, _, rest = spec.partition(":")
    if schema in ("hf-hub", "local-dir", "hf") and rest:
        if pretrained:
            raise ConfigError(
                f"pretrained={pretrained!r} only applies to open_clip architecture names, not to "
                f"{spec!r} (its weights come with it)."
            )
        return _parse_prefixed(schema, rest)
    if _looks_like_path(spec) or Path(spec).expanduser().is_dir():
        return _local_spec(Path(spec).expanduser(), spec)
    return _parse_name(spec, pretrained)


def _parse_prefixed(schema: str, rest: str) -> ParsedSpec:
    """``hf-hub:org/repo``, ``local-dir:/path``, ``hf:org/repo`` or ``hf:/path``."""
    if schema == "hf-hub":
        if not _HUB_ID.match(rest):
            raise ConfigError(f"'hf-hub:' needs an 'org/repo' id, got {rest!r}. {SPEC_HELP}")
        return ParsedSpec("open_clip", "hf-hub", rest)
    path = Path(rest).expanduser()
    if schema == "local-dir":
        if not (path / "open_clip_config.json").is_file():
            where = "does not exist" if not path.exists() else "has no open_clip_config.json"
            raise ConfigError(f"open_clip directory {rest!r} {where}. {SPEC_HELP}")
        return ParsedSpec("open_clip", "local-dir", str(path.resolve()))
    if _looks_like_path(rest) or path.exists():
        return _as_hf(_local_spec(path, rest), rest)
    if not _HUB_ID.match(rest):
        raise ConfigError(f"'hf:' needs an 'org/repo' id or a local path, got {rest!r}.")
    return ParsedSpec("hf", "hub", rest)


def _parse_name(spec: str, pretrained: str | None) -> ParsedSpec:
    """An open_clip architecture (with its tag) or a Hugging Face hub id."""
    split = _split_open_clip(spec)
    if split is not None:
        name, tag = split
        if tag and pretrained and tag != pretrained:
            raise ConfigError(
                f"{spec!r} names the tag {tag!r} but pretrained={pretrained!r} was also given; "
                "give the tag once."
            )
        return _builtin_spec(name, tag or pretrained)
    dashed = spec.replace("/", "-").lower()  # OpenAI's own spelling: ViT-B/32
    if "/" in spec and dashed in _open_clip_names():
        return _builtin_spec(_open_clip_names()[dashed], pretrained)
    if not _HUB_ID.match(spec) or _typo_of_open_clip(spec):
        raise _unknown_name(spec)
    if pretrained:
        raise ConfigError(
            f"pretrained={pretrained!r} only applies to open_clip architecture names; "
            f"{spec!r} is read as a Hugging Face hub id. {SPEC_HELP}"
        )
    return ParsedSpec("hf", "hub", spec)


def _as_hf(parsed: ParsedSpec, given: str) -> ParsedSpec:
    if parsed.family != "hf":
        raise ConfigError(
            f"'hf:{given}' is an open_clip directory; load it as 'local-dir:{given}' instead."
        )
    return parsed


def wants_quick_gelu(model: str, pretrained: str | None) -> bool:
    """Whether open_clip's weights ``pretrained`` for ``model`` were trained with QuickGELU.

    OpenAI's CLIP weights (the ``openai`` tags, and a few others) use QuickGELU; open_clip builds
    plain GELU for names like ``ViT-L-14`` and only warns, so the encoder must ask for it.
    """
    if not pretrained:
        return False
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False))


@dataclass(frozen=True)
class EncoderSpec:
    """The CLIP-style encoder a pipeline declares once, in its ``encoder:`` section.

    Index builds, benchmark runs (which key their cached gallery index by it), the demo and run
    manifests all read the encoder from here; encoding stages without a ``model`` of their own
    use it, so gallery and reference images get the same preprocessing.

    Args:
        model: the model name as users type it (``ViT-L-14/openai``, ``hf-hub:org/repo``, ...).
        pretrained: the open_clip weights tag, when ``model`` is a bare architecture name.
        preprocessing: ``default`` (the model's resize and centre crop) or ``targetpad``
            (pad images to an aspect ratio of at most 1.25 first, as CIReVL, LDRE and SEIZE do).
        dtype: weights dtype (``fp16``, ``bf16``, ``fp32``); default: fp16 on CUDA, fp32 on the CPU.

    Example:
        >>> EncoderSpec.from_config({"model": "ViT-L-14", "pretrained": "openai",
        ...                          "preprocessing": "targetpad"}).label
        'ViT-L-14/openai'
    """

    model: str
    pretrained: str | None = None
    preprocessing: str = "default"
    dtype: str | None = None

    _KEYS: ClassVar[tuple[str, ...]] = ("model", "pretrained", "preprocessing", "dtype")

    @classmethod
    def from_config(cls, value: Any) -> EncoderSpec:
        """From a pipeline's ``encoder:`` value: a model name, or a mapping of the fields."""
        if isinstance(value, str):
            value = {"model": value}
        if not isinstance(value, dict) or not isinstance(value.get("model"), str):
            raise ConfigError(
                f"`encoder:` must be a model name or a mapping with a `model:` name, got {value!r}"
            )
        unknown = sorted(set(value) - set(cls._KEYS))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(unknown)} under `encoder:`; "
                f"valid: {', '.join(cls._KEYS)}"
            )
        from cir.models.encoder import PREPROCESSING

        spec = cls(**value)
        if spec.preprocessing not in PREPROCESSING:
            raise ConfigError(
                f"encoder preprocessing {spec.preprocessing!r} is not one of "
                f"{', '.join(PREPROCESSING)}"
            )
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._KEYS if getattr(self, k) is not None}

    @property
    def label(self) -> str:
        """``model/pretrained`` (or the model alone): how the encoder is named on the CLI."""
        return f"{self.model}/{self.pretrained}" if self.pretrained else self.model

    @property
    def backbone(self) -> str:
        """The architecture part of the name (``ViT-L-14``), which backbone presets key on."""
        schema, _, rest = self.model.partition(":")
        if (schema in ("hf-hub", "hf", "local-dir") and rest) or _looks_like_path(self.model):
            return Path(rest or self.model).name  # a hub repository or a folder: its last part
        split = _split_open_clip(self.model)  # an open_clip name, with or without its tag
        return split[0] if split is not None else self.model.rpartition("/")[2]

    def fingerprint(self) -> str:
        """A stable text naming everything that changes the embeddings (index cache keys)."""
        return json.dumps(self.to_dict() | {"preprocessing": self.preprocessing}, sort_keys=True)
