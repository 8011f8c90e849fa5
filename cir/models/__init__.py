"""Frozen CLIP-style encoders (open_clip and Hugging Face CLIP/SigLIP) behind one contract.

Example:
    >>> from cir.models import load_encoder
    >>> enc = load_encoder("ViT-B-32/openai")
    >>> enc.encode_texts(["a red dress"]).shape
    torch.Size([1, 512])
"""

from __future__ import annotations

import torch

from cir.models.encoder import (
    Encoder,
    EncoderIdentity,
    check_preprocessing,
    resolve_device,
    resolve_dtype,
    target_pad,
)
from cir.models.spec import ParsedSpec, parse_spec, wants_quick_gelu

DEFAULT_ENCODER = "ViT-L-14/openai"
"""The encoder examples and the quickstart use unless told otherwise (OpenAI's CLIP ViT-L/14)."""


def load_encoder(
    spec: str,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    preprocessing: str = "default",
    cache_dir: str | None = None,
) -> Encoder:
    """Load a frozen image/text encoder by the name users type.

    Args:
        spec: ``"ViT-L-14/openai"`` or ``"ViT-L-14"`` with ``pretrained``, ``"hf-hub:org/repo"``,
            ``"local-dir:/path"`` (open_clip); ``"openai/clip-vit-large-patch14"``,
            ``"google/siglip-base-patch16-224"``, ``"hf:org/repo"`` or a local directory holding
            ``config.json`` (Hugging Face CLIP/SigLIP).
        pretrained: open_clip weights tag (``"openai"``, ``"laion2b_s32b_b82k"``) or a checkpoint
            file.
        device: ``"cuda"`` when available, else ``"cpu"``, unless given.
        dtype: fp16 on CUDA and fp32 on the CPU unless given (``"bf16"``, ``"fp16"``, ``"fp32"``).
        preprocessing: ``"default"`` (the model's own resize and crop) or ``"targetpad"`` (pad
            elongated images first, as in CIReVL).
        cache_dir: where downloads go instead of the Hugging Face cache (``HF_HOME``, by default
            ``~/.cache/huggingface``). Set ``HF_HUB_OFFLINE=1`` and use local paths to stay offline.

    Returns:
        An :class:`Encoder` whose ``identity.spec`` rebuilds it.

    Raises:
        ConfigError: unknown name or tag, missing local path, bad device/dtype/preprocessing, or a
            model that could not be loaded (the message says where it looked).
    """
    parsed = parse_spec(spec, pretrained)
    check_preprocessing(preprocessing)
    chosen_device = resolve_device(device)
    chosen_dtype = resolve_dtype(dtype, chosen_device)
    if parsed.family == "open_clip":
        from cir.models.open_clip_encoder import OpenClipEncoder

        return OpenClipEncoder(parsed, chosen_device, chosen_dtype, preprocessing, cache_dir)
    from cir.models.hf_encoder import HFEncoder

    return HFEncoder(parsed, chosen_device, chosen_dtype, preprocessing, cache_dir)


__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "EncoderIdentity",
    "ParsedSpec",
    "load_encoder",
    "parse_spec",
    "resolve_device",
    "resolve_dtype",
    "target_pad",
    "wants_quick_gelu",
]
