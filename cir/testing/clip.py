"""Tiny random CLIP-style models on disk, loadable offline by :func:`cir.models.load_encoder`.

Each factory builds a seeded random model (2 layers, width 64, 32×32 images) and saves it in the
format users' real models come in, so the real loading code is exercised:

- :func:`tiny_open_clip`: ``open_clip_config.json`` + ``open_clip_model.safetensors`` → returns
  ``"local-dir:<directory>"``; uses open_clip's real CLIP BPE vocabulary.
- :func:`tiny_hf_clip`: a transformers ``CLIPModel`` with a CLIP tokenizer (the same real BPE) and
  ``CLIPImageProcessor`` → returns the directory.
- :func:`tiny_siglip`: a transformers ``SiglipModel`` with a small trained Unigram tokenizer (end
  marker, padding to the full context) and ``SiglipImageProcessor`` → returns the directory.

Example:
    >>> from cir.models import load_encoder
    >>> enc = load_encoder(tiny_open_clip(tmp_path / "clip"))
    >>> enc.encode_texts(["a red dress"]).shape
    torch.Size([1, 32])
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

EMBED_DIM = 32
WIDTH = 64
LAYERS = 2
IMAGE_SIZE = 32
PATCH_SIZE = 8
SIGLIP_CONTEXT = 16
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_open_clip(
    directory: str | Path, seed: int = 0, quick_gelu: bool = False, embed_dim: int | None = None
) -> str:
    """Write a tiny random open_clip model to ``directory`` and return ``"local-dir:<directory>"``.

    Args:
        directory: created if missing; existing model files are overwritten.
        seed: weights are a pure function of the seed.
        quick_gelu: build the model with QuickGELU activations (as OpenAI's weights need).
        embed_dim: the embedding size (default a tiny one; 768 matches ViT-L/14 data files).
    """
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": embed_dim or EMBED_DIM,
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "layers": LAYERS,
            "width": WIDTH,
            "head_width": 32,
            "patch_size": PATCH_SIZE,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": WIDTH,
            "heads": 2,
            "layers": LAYERS,
        },
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**model_cfg)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": _CLIP_MEAN, "std": _CLIP_STD, "interpolation": "bicubic"},
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return f"local-dir:{out.resolve()}"


def tiny_hf_clip(directory: str | Path, seed: int = 0) -> str:
    """Write a tiny random transformers ``CLIPModel`` with tokenizer and image processor.

    Returns:
        The directory path, loadable with ``load_encoder(path)`` or ``CLIPModel.from_pretrained``.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_bpe_tokenizer(out)
    config = CLIPConfig(
        text_config=_tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=_tower(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        projection_dim=EMBED_DIM,
    )
    _save_random(CLIPModel, config, out, seed)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    ).save_pretrained(out)
    return str(out.resolve())


def tiny_siglip(directory: str | Path, seed: int = 0) -> str:
    """Write a tiny random transformers ``SiglipModel`` with tokenizer and image processor.

    The text context is :data:`SIGLIP_CONTEXT` tokens, so truncation is easy to provoke.

    Returns:
        The directory path, loadable with ``load_encoder(path)`` or ``AutoModel.from_pretrained``.
    """
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _unigram_tokenizer()
    config = SiglipConfig(
        text_config=_tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=SIGLIP_CONTEXT,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,  # SigLIP has no start marker
        ),
        vision_config=_tower(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
    )
    _save_random(SiglipModel, config, out, seed)
    tokenizer.save_pretrained(out)
    SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(out)
    return str(out.resolve())


# --------------------------------------------------------------------------- helpers


def _tower(**extra: object) -> dict:
    return {
        "hidden_size": WIDTH,
        "intermediate_size": 2 * WIDTH,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 2,
        **extra,
    }


def _save_random(model_cls: type, config: object, out: Path, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    model.save_pretrained(out)


def _clip_bpe_tokenizer(workdir: Path):
    """A transformers CLIP tokenizer over the real CLIP BPE that ships inside open_clip."""
    import inspect

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {tok: i for i, tok in enumerate(vocab)}
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        return CLIPTokenizer(vocab=ids, merges=merges, model_max_length=77)
    staging = workdir / ".bpe"  # transformers 4.x reads the vocabulary from files
    staging.mkdir(exist_ok=True)
    (staging / "vocab.json").write_text(json.dumps(ids))
    merge_lines = "\n".join(" ".join(m) for m in merges)
    (staging / "merges.txt").write_text("#version: 0.2\n" + merge_lines + "\n")
    tokenizer = CLIPTokenizer(
        vocab_file=str(staging / "vocab.json"),
        merges_file=str(staging / "merges.txt"),
        model_max_length=77,
    )
    for name in ("vocab.json", "merges.txt"):
        (staging / name).unlink()
    staging.rmdir()
    return tokenizer


_SIGLIP_CORPUS = """
a photo of a red dress with long sleeves and a white collar
the same jacket but in blue and without a hood
a cat sitting on a wooden table next to a cup of coffee
two dogs running on the beach at sunset
a rocket standing on the launch pad under a clear sky
a woman in an astronaut suit holding a flag
a bowl of fruit with oranges apples and bananas
a black motorcycle parked in front of a brick wall
a tall tower seen from below on a cloudy day
a flower garden with yellow and purple flowers
""".strip().splitlines()


def _unigram_tokenizer():
    """A small SentencePiece-style (Unigram, no start marker, end marker appended) tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(_SIGLIP_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=SIGLIP_CONTEXT,
    )
