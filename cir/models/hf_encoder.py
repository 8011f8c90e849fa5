"""Hugging Face transformers CLIP and SigLIP models, by hub id or local directory.

Hub ids (``openai/clip-vit-large-patch14``, ``google/siglip-base-patch16-224``) are downloaded into
the Hugging Face cache (``HF_HOME``, by default ``~/.cache/huggingface``; ``cache_dir=`` overrides
it). Offline, pass a directory written by ``save_pretrained`` (model, tokenizer and image processor)
and set ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

from typing import Any

import torch

from cir.errors import ConfigError
from cir.models.encoder import Encoder, EncoderIdentity, ImagePreprocess, hf_cache_note
from cir.models.spec import ParsedSpec

SUPPORTED_TYPES = ("clip", "siglip")


class HFPixels:
    """PIL image → ``pixel_values[0]`` through a transformers image processor (picklable)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class HFEncoder(Encoder):
    """A transformers ``CLIPModel`` or ``SiglipModel`` behind the encoder contract.

    SigLIP texts are padded to the full context (``padding="max_length"``), as the model was
    trained; CLIP texts are padded to the longest in the batch.

    Example:
        >>> enc = HFEncoder(parse_spec("google/siglip-base-patch16-224"), torch.device("cpu"),
        ...                 torch.float32)
        >>> enc.encode_texts(["a dog on a sofa"]).shape
        torch.Size([1, 768])
    """

    def __init__(
        self,
        parsed: ParsedSpec,
        device: torch.device,
        dtype: torch.dtype,
        preprocessing: str = "default",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        self.device, self.dtype = device, dtype
        source = parsed.model
        try:
            config = AutoConfig.from_pretrained(source, cache_dir=cache_dir)
            self.model_type = _check_type(config.model_type, parsed.spec)
            model = AutoModel.from_pretrained(source, cache_dir=cache_dir)
            self.tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
            processor = AutoImageProcessor.from_pretrained(source, cache_dir=cache_dir)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"could not load Hugging Face model {parsed.spec!r}: {err}. Hub ids look like "
                f"'openai/clip-vit-base-patch32'. {hf_cache_note()}"
            ) from err
        self.model = model.to(device=device, dtype=dtype).eval()
        self.context_length = int(config.text_config.max_position_embeddings)
        self.preprocess = ImagePreprocess(HFPixels(processor), preprocessing == "targetpad")
        self.identity = EncoderIdentity(
            family="hf",
            model=parsed.model,
            pretrained=None,
            spec=parsed.spec,
            preprocessing=preprocessing,
            dim=self._probe_dim(),
        )

    def _probe_dim(self) -> int:
        inputs, _ = self._tokenize([""])
        with torch.inference_mode():
            return int(self._text_features(inputs).shape[-1])

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _tokenize(self, texts: list[str]) -> tuple[Any, int]:
        # Tokenizing with one token of slack tells which texts overflow, without a length warning.
        lengths = self.tokenizer(texts, truncation=True, max_length=self.context_length + 1)
        cut = sum(len(ids) > self.context_length for ids in lengths["input_ids"])
        padding = "max_length" if self.model_type == "siglip" else "longest"
        inputs = self.tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return inputs.to(self.device), cut

    def _text_features(self, inputs: Any) -> torch.Tensor:
        kwargs = {"input_ids": inputs["input_ids"]}
        if self.model_type == "clip" and "attention_mask" in inputs:
            kwargs["attention_mask"] = inputs["attention_mask"]
        return _pooled(self.model.get_text_features(**kwargs))


def _check_type(model_type: str, spec: str) -> str:
    if model_type not in SUPPORTED_TYPES:
        raise ConfigError(
            f"{spec!r} is a {model_type!r} model; Hugging Face encoders must be one of "
            f"{', '.join(SUPPORTED_TYPES)} (CLIPModel or SiglipModel). Use open_clip names for "
            "other architectures."
        )
    return model_type


def _pooled(output: Any) -> torch.Tensor:
    """transformers 4.x returns the embeddings; 5.x returns an output whose pooler holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
