"""Local generation with Hugging Face transformers: text LLMs, chat VLMs and BLIP-style captioners.

The path is picked from the model's config:

- ``captioner``: BLIP / BLIP-2 (``Blip*ForConditionalGeneration``); each request carries one image
  and its text, if any, is the conditional prompt (BLIP) or instruction (BLIP-2);
- ``vlm``: chat VLMs through ``AutoModelForImageTextToText`` and the processor's chat template
  (Qwen2-VL, Qwen2.5-VL, LLaVA, ...);
- ``causal_lm``: text LLMs through ``AutoModelForCausalLM`` and the tokenizer's chat template.

Greedy requests are grouped by their settings and run in left-padded batches; their results do not
depend on how requests are batched. A sampled request runs in a call of its own, seeded with its
own seed (its ``n`` samples still come from that one call), so a sampled answer depends only on
the request: the same captions come back whatever else shares the batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import torch

from cir.errors import BackendError, ConfigError
from cir.llm.base import ChatRequest, Generation, check_batch, cut_at_stop
from cir.resources import Resources

Kind = Literal["auto", "causal_lm", "vlm", "captioner"]
_CAPTIONER_TYPES = ("blip", "blip-2", "blip_2")


@dataclass(frozen=True)
class Options:
    """Spec options of ``{"backend": "transformers", ...}``.

    Attributes:
        model: a Hugging Face model id or a local folder.
        revision: a branch, tag or commit of a hub model (part of the identity).
        kind: ``auto`` picks the path from the config; or force ``causal_lm``, ``vlm``,
            ``captioner``.
        dtype: ``auto`` (float32 on the CPU, the checkpoint's dtype on a GPU), ``float32``,
            ``float16`` or ``bfloat16``.
        device: ``cuda``, ``cpu``, ...; default: the first GPU when there is one.
        device_map: ``auto`` spreads a large model across the devices with accelerate
            (``device`` is then ignored).
        batch_size: most requests per ``generate`` call.
        use_chat_template: False sends the messages' raw text, without a chat template.
        trust_remote_code: allow a model's own code from the hub.
    """

    model: str
    revision: str | None = None
    kind: Kind = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str | None = None
    device_map: str | None = None
    batch_size: int = 16
    use_chat_template: bool = True
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class TransformersLLM:
    """A transformers model behind the backend protocol.

    Example:
        >>> llm = TransformersLLM(Options(model="Salesforce/blip-image-captioning-large"))
        >>> llm.generate([ChatRequest.from_prompt("a photography of", images=[photo])])[0].text
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.identity = identity(options)
        self.kind, self.model, self.processor = _load(options)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)

    def __repr__(self) -> str:
        return f"TransformersLLM(identity={self.identity!r}, kind={self.kind!r})"

    def generate(self, requests: list[ChatRequest]) -> list[Generation]:
        """Generate for every request; results come back in request order."""
        requests = check_batch("TransformersLLM", requests)
        results: list[Generation | None] = [None] * len(requests)
        for group in self._groups(requests):
            step = 1 if requests[group[0]].sampled else self.options.batch_size
            for start in range(0, len(group), step):
                chunk = group[start : start + step]
                gens = self._run([requests[i] for i in chunk])
                for i, gen in zip(chunk, gens, strict=True):
                    results[i] = gen
        return results  # type: ignore[return-value]

    def _groups(self, requests: list[ChatRequest]) -> list[list[int]]:
        """Indices grouped by what one ``generate`` call must share."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            key = (req.max_tokens, req.min_tokens, req.n, req.logprobs, req.sampled, req.num_beams,
                   req.stop)  # fmt: skip
            if req.sampled:
                key += (req.temperature, req.top_p)
            if self.kind == "captioner":
                key += (_caption_prompt(req),)
            groups[key].append(i)
        return list(groups.values())

    def _run(self, batch: list[ChatRequest]) -> list[Generation]:
        first = batch[0]
        inputs = self._encode(batch).to(self.model.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=first.max_tokens,
            min_new_tokens=first.min_tokens or None,
            num_return_sequences=_rows_per_request(first),
            do_sample=first.sampled,
            return_dict_in_generate=True,
            output_logits=first.logprobs > 0,
        )
        if first.stop and self.kind != "captioner":  # end early; _decode cuts the text exactly
            kwargs.update(stop_strings=list(first.stop), tokenizer=self.tokenizer)
        if first.sampled:
            kwargs.update(temperature=first.temperature, top_p=first.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None, num_beams=first.num_beams)
        cuda = list(range(torch.cuda.device_count())) if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():  # callers' RNG untouched
            torch.manual_seed(first.seed)
            out = self.model.generate(**inputs, **kwargs)
        return self._decode(batch, inputs, out)

    def _encode(self, batch: list[ChatRequest]):
        if self.kind == "captioner":
            return _encode_captions(self.processor, batch)
        if self.kind == "vlm":
            texts = [self._template(req, with_images=True) for req in batch]
            images = [im for req in batch for im in req.images] or None
            return self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        for req in batch:
            if req.images:
                raise BackendError(
                    f"{self.options.model} is a text-only model and cannot read the "
                    f"{len(req.images)} image(s) in a request; use a chat VLM or a captioner"
                )
        texts = [self._template(req, with_images=False) for req in batch]
        return self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)

    def _template(self, req: ChatRequest, with_images: bool) -> str:
        if not self.options.use_chat_template:
            return req.prompt_text
        template_owner = self.processor if with_images else self.tokenizer
        if not getattr(template_owner, "chat_template", None):
            raise BackendError(
                f"{self.options.model} has no chat template; set use_chat_template: false to "
                "send the raw prompt"
            )
        conversation = [_message_dict(m, with_images) for m in req.messages]
        return template_owner.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )

    def _decode(self, batch: list[ChatRequest], inputs, out) -> list[Generation]:
        n, per = batch[0].n, _rows_per_request(batch[0])
        if self.kind == "captioner":  # BLIP returns its prompt, BLIP-2 may not: strip by text
            texts = self.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
            texts = [
                _strip_prompt(t, _caption_prompt(batch[i // per])) for i, t in enumerate(texts)
            ]
            lengths = None
        else:
            new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            lengths = (new_tokens != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        logprobs = self._first_token_logprobs(out, batch[0].logprobs)
        mask = inputs.get("attention_mask")
        prompt_tokens = mask.sum(dim=1).tolist() if mask is not None else [None] * len(batch)
        gens = []
        copies = n // per  # greedy decoding gives one answer, repeated for n > 1
        for i in range(len(batch)):
            rows = slice(i * per, (i + 1) * per)
            gens.append(
                Generation(
                    texts=[cut_at_stop(t, batch[i].stop).strip() for t in texts[rows]] * copies,
                    first_token_logprobs=logprobs[rows] * copies if logprobs is not None else None,
                    prompt_tokens=prompt_tokens[i],
                    completion_tokens=sum(lengths[rows]) * copies if lengths is not None else None,
                )
            )
        return gens

    def _first_token_logprobs(self, out, k: int) -> list[dict[str, float]] | None:
        if k == 0 or not getattr(out, "logits", None):
            return None
        logp = torch.log_softmax(out.logits[0].float(), dim=-1)
        top = logp.topk(min(k, logp.shape[-1]), dim=-1)
        rows = []
        for ids, values in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            row: dict[str, float] = {}
            for token, value in zip(ids, values, strict=True):  # best first; keep the best of
                row.setdefault(self.tokenizer.decode([token]), value)  # tokens decoding alike
            rows.append(row)
        return rows


def _rows_per_request(req: ChatRequest) -> int:
    """Sequences to generate per request: ``n`` when sampling; greedy ones are all alike."""
    return req.n if req.sampled else 1


def _message_dict(message, with_images: bool) -> dict[str, Any]:
    if not with_images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [
        {"type": "image"} if kind == "image" else {"type": "text", "text": value}
        for kind, value in message.parts()
    ]
    return {"role": message.role, "content": parts}


def _caption_prompt(req: ChatRequest) -> str:
    users = [m.content for m in req.messages if m.role == "user"]
    return users[-1].strip() if users else ""


def _encode_captions(processor, batch: list[ChatRequest]):
    for req in batch:
        if len(req.images) != 1:
            raise BackendError(
                f"a captioner reads exactly one image per request, got {len(req.images)}"
            )
    images = [req.images[0] for req in batch]
    prompt = _caption_prompt(batch[0])  # the same for the whole group
    if prompt:
        return processor(images=images, text=[prompt] * len(batch), return_tensors="pt")
    return processor(images=images, return_tensors="pt")


def _strip_prompt(text: str, prompt: str) -> str:
    """Captioners may repeat their conditional prompt; keep only the continuation."""
    if prompt and text.lower().startswith(prompt.lower()):
        return text[len(prompt) :]
    return text


def _load(options: Options):
    import transformers

    common = dict(revision=options.revision, trust_remote_code=options.trust_remote_code)
    try:
        config = transformers.AutoConfig.from_pretrained(options.model, **common)
    except OSError as exc:
        raise BackendError(
            f"cannot load the transformers model {options.model!r}: {exc}. Give a local folder "
            "or a Hugging Face id that is downloadable (or already in the HF cache)."
        ) from None
    kind = _pick_kind(config) if options.kind == "auto" else options.kind
    model_cls, proc_cls = {
        "captioner": (_captioner_class(config), transformers.AutoProcessor),
        "vlm": (transformers.AutoModelForImageTextToText, transformers.AutoProcessor),
        "causal_lm": (transformers.AutoModelForCausalLM, transformers.AutoTokenizer),
    }[kind]
    model = model_cls.from_pretrained(options.model, **_placement(options), **common).eval()
    if not options.device_map:
        model.to(_device(options))
    processor = proc_cls.from_pretrained(options.model, **common)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return kind, model, processor


def _pick_kind(config) -> str:
    if config.model_type in _CAPTIONER_TYPES:
        return "captioner"
    if getattr(config, "vision_config", None) is not None:
        return "vlm"
    return "causal_lm"


def _captioner_class(config):
    import transformers

    for name in config.architectures or []:
        if name.endswith("ForConditionalGeneration") and hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModelForImageTextToText


def _device(options: Options) -> str:
    return options.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _placement(options: Options) -> dict[str, Any]:
    dtype: Any = options.dtype
    if dtype == "auto":
        dtype = "auto" if _device(options).startswith("cuda") or options.device_map else "float32"
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype) if dtype != "auto" else "auto"}
    if options.device_map:
        kwargs["device_map"] = options.device_map
    return kwargs


def identity(options: Options) -> str:
    """The backend's identity for ``options`` (cache keys), without loading the model."""
    rev = f"@{options.revision}" if options.revision else ""
    raw = "" if options.use_chat_template else ":raw"
    return f"transformers:{options.model}{rev}:{options.dtype}{raw}"


def build(options: Options, resources: Resources | None = None) -> TransformersLLM:
    """The backend for a validated spec."""
    try:
        return TransformersLLM(options)
    except ImportError as exc:
        raise ConfigError(f"the transformers backend needs: {exc}") from None
