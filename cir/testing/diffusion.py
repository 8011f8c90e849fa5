"""Tiny diffusers pipelines built from configs, saved with ``save_pretrained``, for offline tests.

Each function writes a complete pipeline folder (``model_index.json``, UNet, VAE, scheduler,
CLIP text encoder and tokenizer) with random but seeded weights and returns its path;
``DiffusionPipeline.from_pretrained(path)`` and cir's generators load it like a downloaded model.
The tokenizer is CLIP's real BPE vocabulary (shipped with open_clip). A 32x32 picture takes a few
milliseconds per denoising step on a CPU.

Example:
    >>> editor = tiny_instruct_pix2pix(tmp_path / "editor")
    >>> drawer = tiny_text_to_image(tmp_path / "drawer")
    >>> load_generator({"model": editor}).can_edit
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cir.testing.clip import _clip_bpe_tokenizer

_WIDTH = 32
"""Hidden size of the text encoder and cross-attention width of the UNet."""


def tiny_instruct_pix2pix(path: str | Path, seed: int = 0) -> str:
    """An InstructPix2Pix-style editor (``StableDiffusionInstructPix2PixPipeline``): the UNet
    sees the noisy latents and the input image's latents (8 channels)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    parts = _components(Path(path), seed, in_channels=8)
    pipeline = StableDiffusionInstructPix2PixPipeline(**parts, requires_safety_checker=False)
    return _save(pipeline, path)


def tiny_text_to_image(path: str | Path, seed: int = 0) -> str:
    """A text-to-image pipeline (``StableDiffusionPipeline``) drawing 32x32 pictures."""
    from diffusers import StableDiffusionPipeline

    parts = _components(Path(path), seed, in_channels=4)
    pipeline = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    return _save(pipeline, path)


def _components(path: Path, seed: int, in_channels: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_bpe_tokenizer(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=_WIDTH // 2,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=_WIDTH,
    )
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": CLIPTextModel(text).eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
    }


def _save(pipeline: Any, path: str | Path) -> str:
    pipeline.save_pretrained(path)
    return str(path)
