"""The encoder contract: identity, device/dtype choice and target-pad preprocessing.

Every CLIP-style model (open_clip or Hugging Face transformers) is wrapped in an :class:`Encoder`
with the same small surface: ``preprocess`` a PIL image, ``encode_pixels`` / ``encode_images`` /
``encode_texts`` returning float32 CPU tensors, and an :class:`EncoderIdentity` that a gallery index
stores and compares.

Model names are parsed by :func:`cir.models.spec.parse_spec` without loading anything, so a typo
fails fast with a helpful message.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from cir.errors import ConfigError

logger = logging.getLogger("cir.models")

FAMILIES = ("open_clip", "hf")
PREPROCESSING = ("default", "targetpad")
TARGET_PAD_RATIO = 1.25
_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class EncoderIdentity:
    """What an encoder is, stored in gallery indexes and compared before searching.

    Args:
        family: ``"open_clip"`` or ``"hf"`` (Hugging Face transformers).
        model: the model name, hub id or local path.
        pretrained: the open_clip weights tag (or checkpoint path); ``None`` otherwise.
        spec: a string :func:`cir.models.load_encoder` accepts to rebuild the encoder.
        preprocessing: ``"default"`` or ``"targetpad"``.
        dim: embedding dimension.

    Example:
        >>> ident = EncoderIdentity("open_clip", "ViT-B-32", "openai", "ViT-B-32/openai", dim=512)
        >>> ident.key
        'open_clip:ViT-B-32:openai'
        >>> EncoderIdentity.from_dict(ident.to_dict()) == ident
        True
    """

    family: str
    model: str
    pretrained: str | None
    spec: str
    preprocessing: str = "default"
    dim: int = 0

    @property
    def key(self) -> str:
        """``family:model:pretrained``: two encoders with the same key embed into the same space."""
        return f"{self.family}:{self.model}:{self.pretrained}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderIdentity:
        """Rebuild from :meth:`to_dict` output (unknown keys are ignored, missing ones refused)."""
        missing = [name for name in ("family", "model", "spec") if name not in data]
        if missing:
            raise ConfigError(
                f"encoder identity is missing {missing}; expected keys: family, model, "
                f"pretrained, spec, preprocessing, dim (got {sorted(data)})"
            )
        return cls(
            family=data["family"],
            model=data["model"],
            pretrained=data.get("pretrained"),
            spec=data["spec"],
            preprocessing=data.get("preprocessing", "default"),
            dim=int(data.get("dim", 0)),
        )


# --------------------------------------------------------------------------- device and dtype


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``cuda`` when available, else ``cpu``; an explicit choice is honoured if it exists."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"invalid device {device!r}; use 'cpu', 'cuda' or 'cuda:N'.") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available; use 'cpu'.")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r} does not exist: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:N-1 or 'cpu'."
        )
    if chosen.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {device!r}; use 'cpu', 'cuda' or 'cuda:N'.")
    return chosen


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA and fp32 on the CPU by default; ``"bf16"``/``"fp16"``/``"fp32"`` accepted."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ConfigError(f"invalid dtype {dtype!r}; use one of 'fp32', 'fp16', 'bf16'.")


def check_preprocessing(preprocessing: str) -> str:
    if preprocessing not in PREPROCESSING:
        raise ConfigError(
            f"unknown preprocessing {preprocessing!r}; valid: {', '.join(PREPROCESSING)}."
        )
    return preprocessing


# --------------------------------------------------------------------------- preprocessing


def target_pad(image: Image.Image, ratio: float = TARGET_PAD_RATIO) -> Image.Image:
    """Pad a very elongated image with black borders so its aspect ratio is at most ``ratio``.

    This is the "target pad" preprocessing used by CLIP4Cir and CIReVL (Karthik et al., ICLR 2024)
    before the model's resize and centre crop: the crop then keeps the whole object instead of its
    middle. Images with an aspect ratio below ``ratio`` are returned unchanged.
    """
    width, height = image.size
    long_side, short_side = max(width, height), min(width, height)
    if short_side == 0 or long_side / short_side < ratio:
        return image
    goal = long_side / ratio
    pad_x = max(int((goal - width) / 2), 0)
    pad_y = max(int((goal - height) / 2), 0)
    if pad_x == 0 and pad_y == 0:
        return image
    canvas = Image.new(image.mode, (width + 2 * pad_x, height + 2 * pad_y))
    canvas.paste(image, (pad_x, pad_y))
    return canvas


class ImagePreprocess:
    """PIL image → model input tensor (3, H, W): RGB conversion, optional target pad, transform.

    Picklable as long as ``transform`` is, so it can run inside DataLoader worker processes.
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], targetpad: bool = False):
        self.transform = transform
        self.targetpad = targetpad

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.targetpad:
            image = target_pad(image)
        return self.transform(image)


# --------------------------------------------------------------------------- the encoder


class Encoder:
    """A frozen CLIP-style image/text encoder with batched, normalised outputs.

    Built by :func:`cir.models.load_encoder`; subclasses implement ``_image_features``,
    ``_tokenize`` and ``_text_features``. Outputs are float32 CPU tensors, L2-normalised unless
    ``normalize=False`` (then the raw projector outputs).

    Example:
        >>> enc = load_encoder("ViT-B-32/openai")
        >>> enc.encode_texts(["a red dress"]).shape
        torch.Size([1, 512])
    """

    identity: EncoderIdentity
    device: torch.device
    dtype: torch.dtype
    context_length: int
    preprocess: ImagePreprocess

    def __init__(self) -> None:
        self.truncated_texts = 0

    @property
    def dim(self) -> int:
        return self.identity.dim

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.identity.spec!r}, device={self.device}, dtype={self.dtype})"

    def with_preprocessing(self, preprocessing: str) -> Encoder:
        """This encoder with another image preprocessing, sharing the loaded model (no reload)."""
        check_preprocessing(preprocessing)
        twin = copy.copy(self)
        twin.preprocess = ImagePreprocess(self.preprocess.transform, preprocessing == "targetpad")
        twin.identity = dataclasses.replace(self.identity, preprocessing=preprocessing)
        twin.truncated_texts = 0
        return twin

    # backend hooks ---------------------------------------------------------------------------
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _tokenize(self, texts: list[str]) -> tuple[Any, int]:
        """Model inputs for ``texts`` and how many of them were cut to the context length."""
        raise NotImplementedError

    def _text_features(self, inputs: Any) -> torch.Tensor:
        raise NotImplementedError

    # public API ------------------------------------------------------------------------------
    def encode_pixels(self, batch: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed a preprocessed batch ``(B, 3, H, W)`` → ``(B, D)`` float32 on the CPU."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected pixels of shape (B, 3, H, W), got {tuple(batch.shape)}")
        with torch.inference_mode():
            feats = self._image_features(batch.to(self.device, self.dtype))
        return _finish(feats, normalize)

    def encode_images(
        self, images: list[Image.Image], batch_size: int = 32, normalize: bool = True
    ) -> torch.Tensor:
        """Preprocess and embed PIL images in batches → ``(N, D)`` float32 on the CPU."""
        images = list(images)
        chunks = [
            self.encode_pixels(
                torch.stack([self.preprocess(im) for im in images[i : i + batch_size]]), normalize
            )
            for i in range(0, len(images), max(1, batch_size))
        ]
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)

    def encode_texts(
        self, texts: list[str], batch_size: int = 256, normalize: bool = True
    ) -> torch.Tensor:
        """Embed texts in batches → ``(N, D)`` float32 on the CPU.

        Texts longer than the model's context are cut to it; each call that cuts any logs one
        warning and adds the number cut to :attr:`truncated_texts`.
        """
        if isinstance(texts, str):
            raise TypeError("encode_texts expects a list of strings; wrap a single text in a list")
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_texts expects strings, got {sorted(set(bad))}")
        chunks, cut = [], 0
        for i in range(0, len(texts), max(1, batch_size)):
            inputs, n_cut = self._tokenize(texts[i : i + batch_size])
            cut += n_cut
            with torch.inference_mode():
                feats = self._text_features(inputs)
            chunks.append(_finish(feats, normalize))
        if cut:
            self.truncated_texts += cut
            logger.warning(
                "%d of %d texts exceeded the %d-token context of %s and were truncated (%d so far)",
                cut,
                len(texts),
                self.context_length,
                self.identity.spec,
                self.truncated_texts,
            )
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)


def _finish(feats: torch.Tensor, normalize: bool) -> torch.Tensor:
    """float32 CPU copy (a normal tensor, usable outside inference mode), optionally normalised."""
    feats = feats.to("cpu", torch.float32)
    return F.normalize(feats, dim=-1) if normalize else feats.clone()


def hf_cache_note() -> str:
    """Where downloaded weights go (shown in load errors)."""
    home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"Weights are downloaded to the Hugging Face cache ({home}); to run offline, pass a local "
        "directory (or a model already in the cache) and set HF_HUB_OFFLINE=1."
    )
