"""Tiny language models built from configs, saved with ``save_pretrained``, for offline tests.

Each function writes a complete model folder (weights, config, tokenizer or processor with a chat
template, generation config) and returns its path; ``from_pretrained(path)``, vLLM and the cir
backends load it like any downloaded model. Weights are random but seeded, so a given function
writes the same model every time. The text models use head_dim 64 (vLLM's CPU attention rejects
very small heads).

Example:
    >>> path = tiny_causal_lm(tmp_path / "lm")
    >>> llm = load_backend({"backend": "transformers", "model": path})
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VLLM_CPU_ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 256,
    "kv_cache_memory_bytes": 64 * 2**20,
}
"""vLLM engine options for these models on vLLM's CPU build (no compilation, a small KV cache)."""

_CORPUS = [
    "a photo of a red dress with long sleeves on a wooden table",
    "the same shirt but in blue and without a collar",
    "two dogs running on the beach at sunset near the water",
    "a black cat sitting on a white chair in a bright room",
    "change the color of the car to green and add a person",
    "Describe the image in detail. Edited Description: a small yellow bird",
    '{"reference": "a dog", "reasoning": "swap the animal", "target": "a cat"}',
    "yes no maybe the answer is yes because the image shows it",
]

_TEXT_LM = dict(  # hidden 128 / 2 heads = head_dim 64
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    initializer_range=0.2,  # wide enough that random weights produce varied text
)


def _bpe_tokenizer(size: int = 600):
    """A byte-level BPE trained on a few sentences, with Qwen-style special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _save_generation_config(model, ids: dict[str, int]) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], do_sample=False
    )


def text_dims(hidden: int = 128, layers: int = 2) -> dict:
    """Qwen2 text dimensions with head_dim 64 (vLLM's CPU attention needs it): the tiny
    default, or larger ones (``hidden`` a multiple of 64) for memory benchmarks."""
    heads = max(1, hidden // 64)
    return dict(
        _TEXT_LM,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
    )


def tiny_causal_lm(path: str | Path, seed: int = 0, hidden: int = 128, layers: int = 2) -> str:
    """A 2-layer Qwen2 causal LM (about 0.3 M parameters) with a chat-template tokenizer;
    ``hidden``/``layers`` make it larger.

    Returns:
        The folder, as a string, ready for ``from_pretrained`` and vLLM.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tokenizer = _bpe_tokenizer()
    ids = _token_ids(tokenizer)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
        **text_dims(hidden, layers),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    _save_generation_config(model, ids)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_chat_vlm(path: str | Path, seed: int = 0, hidden: int = 128, layers: int = 2) -> str:
    """A tiny Qwen2-VL chat model with its processor (image, video, tokenizer, chat template);
    ``hidden``/``layers`` make its language model larger.

    Images are resized to at most 112x112 pixels, i.e. at most 16 image tokens.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    path = Path(path)
    tokenizer = _bpe_tokenizer()
    ids = _token_ids(tokenizer)
    dims = text_dims(hidden, layers)
    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    rope = {"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 10000.0}
    assert sum(rope["mrope_section"]) == head_dim // 2
    text = dict(dims, vocab_size=len(tokenizer), rope_parameters=rope, rope_scaling=rope)
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    text["pad_token_id"] = ids["<|endoftext|>"]
    vision = dict(depth=1, embed_dim=64, num_heads=2, mlp_ratio=2, hidden_size=hidden)
    vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        initializer_range=_TEXT_LM["initializer_range"],
        **_flat_text_fields(text),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    _save_generation_config(model, ids)
    model.save_pretrained(path)
    size = {"shortest_edge": 28 * 28, "longest_edge": 112 * 112}
    image_processor = Qwen2VLImageProcessor(size=size, min_pixels=28 * 28, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=_qwen2vl_video_processor(size),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _flat_text_fields(text: dict) -> dict:
    """Text fields repeated at the top level of a Qwen2-VL config (how released checkpoints
    store them, and what older readers of the config, vLLM's included, look for)."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    return {k: text[k] for k in keys}


def _qwen2vl_video_processor(size: dict):
    try:
        from transformers import Qwen2VLVideoProcessor
    except ImportError:  # transformers without separate video processors
        return None
    return Qwen2VLVideoProcessor(size=size)


def tiny_blip_captioner(path: str | Path, seed: int = 0) -> str:
    """A tiny BLIP image-captioning model (``BlipForConditionalGeneration``) with its processor.

    The text decoder starts from the ``[DEC]`` token and stops at ``[SEP]``, as BLIP does.
    """
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    path = Path(path)
    tokenizer = _wordpiece_tokenizer()
    dec, sep, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("[DEC]", "[SEP]", "[PAD]"))
    text = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=1)
    text.update(num_attention_heads=2, intermediate_size=128, max_position_embeddings=128)
    text.update(bos_token_id=dec, eos_token_id=sep, sep_token_id=sep, pad_token_id=pad)
    vision = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision.update(intermediate_size=128, image_size=32, patch_size=8)
    vision["initializer_range"] = 0.1  # BLIP's default (1e-10) would make the image invisible
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=64)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=dec, eos_token_id=sep, pad_token_id=pad, decoder_start_token_id=dec
    )
    model.save_pretrained(path)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


def _wordpiece_tokenizer(size: int = 400):
    """A lower-cased WordPiece (BERT-style) tokenizer with BLIP's extra ``[DEC]`` token."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=size, special_tokens=specials)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        bos_token="[DEC]",
        additional_special_tokens=["[DEC]"],
    )


def tiny_paligemma(path: str | Path, seed: int = 0) -> str:
    """A tiny PaliGemma (SigLIP vision tower + Gemma text model) with its processor.

    PaliGemma has no chat template: it takes the raw prompt (``use_chat_template: false``) and its
    processor puts the image tokens in front. Images are resized to 28x28 pixels (4 tokens).
    """
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    path = Path(path)
    tokenizer = _bpe_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = SiglipImageProcessor(size={"height": 28, "width": 28}, image_seq_length=4)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = _token_ids(tokenizer)
    text = dict(text_dims(), head_dim=64, vocab_size=len(processor.tokenizer))
    text.update(pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"])
    text["eos_token_id"] = ids["<|im_end|>"]
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    vision.update(num_attention_heads=2, image_size=28, patch_size=14, projection_dim=128)
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    config = PaliGemmaConfig(
        text_config=text, vision_config=vision, image_token_index=image_token, projection_dim=128
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    _save_generation_config(model, ids)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)
