"""open_clip models: built-in architectures with weights tags, ``hf-hub:`` repos and local folders.

Weights for tags and ``hf-hub:`` repos are downloaded by open_clip into the Hugging Face cache
(``HF_HOME``, by default ``~/.cache/huggingface``; ``cache_dir=`` overrides it). Offline, point at a
folder holding ``open_clip_config.json`` and ``open_clip_model.safetensors`` with
``local-dir:/path`` (and set ``HF_HUB_OFFLINE=1`` so nothing tries the network).
"""

from __future__ import annotations

from typing import Any

import torch

from cir.errors import ConfigError
from cir.models.encoder import Encoder, EncoderIdentity, ImagePreprocess, hf_cache_note
from cir.models.spec import ParsedSpec, wants_quick_gelu

_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class OpenClipEncoder(Encoder):
    """An open_clip model behind the :class:`~cir.models.encoder.Encoder` contract.

    QuickGELU is switched on automatically when the weights tag was trained with it (OpenAI's
    ``openai`` tags), which open_clip itself only warns about.

    Example:
        >>> enc = OpenClipEncoder(parse_spec("ViT-B-32/openai"), torch.device("cpu"), torch.float32)
        >>> enc.identity.key
        'open_clip:ViT-B-32:openai'
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
        import open_clip

        self.device, self.dtype = device, dtype
        builtin = parsed.source == "builtin"
        quick_gelu = builtin and wants_quick_gelu(parsed.model, parsed.pretrained)
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                parsed.open_clip_name,
                pretrained=parsed.pretrained if parsed.source == "builtin" else None,
                precision=_PRECISION[dtype],
                device=device,
                force_quick_gelu=quick_gelu,
                cache_dir=cache_dir,
            )
            self.tokenizer = open_clip.get_tokenizer(parsed.open_clip_name, cache_dir=cache_dir)
        except (OSError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"could not load open_clip model {parsed.spec!r}: {err}. {hf_cache_note()}"
            ) from err
        self.model = model.eval()
        self.quick_gelu = quick_gelu
        self.context_length = int(
            getattr(self.tokenizer, "context_length", None) or model.context_length
        )
        self.preprocess = ImagePreprocess(transform, targetpad=preprocessing == "targetpad")
        self.identity = EncoderIdentity(
            family="open_clip",
            model=parsed.model,
            pretrained=parsed.pretrained,
            spec=parsed.spec,
            preprocessing=preprocessing,
            dim=self._probe_dim(),
        )

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            return int(self.model.encode_text(self.tokenizer([""]).to(self.device)).shape[-1])

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _tokenize(self, texts: list[str]) -> tuple[Any, int]:
        cut = sum(self._token_count(text) > self.context_length for text in texts)
        return self.tokenizer(texts).to(self.device), cut

    def _text_features(self, inputs: Any) -> torch.Tensor:
        return self.model.encode_text(inputs)

    def _token_count(self, text: str) -> int:
        """Tokens ``text`` needs, start and end markers included (0 if the tokenizer can't say)."""
        tok = self.tokenizer
        if hasattr(tok, "encode") and hasattr(tok, "sot_token_id"):  # open_clip's CLIP BPE
            return len(tok.encode(text)) + 2
        inner = getattr(tok, "tokenizer", None)  # open_clip's wrapper of a HF tokenizer
        if inner is not None and callable(inner):
            clean = getattr(tok, "clean_fn", lambda t: t)
            ids = inner(clean(text), truncation=True, max_length=self.context_length + 1)
            return len(ids["input_ids"])
        return 0
