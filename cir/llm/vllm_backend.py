"""Offline generation with vLLM: a whole batch of conversations in one ``LLM.chat`` call.

Text LLMs and multimodal LLMs alike go through ``LLM.chat`` (images as content parts) with one
``SamplingParams`` per request, so every request keeps its own ``n``, temperature and seed;
``use_chat_template: false`` sends the raw text through ``LLM.generate`` instead. One engine is
loaded per set of engine arguments and shared by every spec that names them, whatever their
per-call options.

On a machine without a GPU, vLLM's CPU build runs in its own environment
(``scripts/setup_vllm_env.sh``); use ``dtype: float32``, ``enforce_eager: true`` and a small
``kv_cache_memory_bytes`` there. Scripts that start an engine need ``if __name__ == "__main__":``
because vLLM starts its workers with the spawn method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cir.errors import BackendError, ConfigError
from cir.llm.base import ChatRequest, Generation, check_batch
from cir.resources import Resources, default_resources

# Options that are not arguments of the engine (two specs differing only here share it).
_CALL_OPTIONS = ("use_chat_template",)
MEMORY_MARGIN_BYTES = 1 << 30
"""GPU memory left free when the engine's share is chosen from what is free at start-up."""


@dataclass(frozen=True)
class Options:
    """Spec options of ``{"backend": "vllm", ...}`` (engine arguments of ``vllm.LLM``).

    Attributes:
        model: a Hugging Face model id or a local folder.
        revision: branch, tag or commit of a hub model (part of the identity).
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        max_model_len: longest prompt plus answer, in tokens (default: the model's).
        gpu_memory_utilization: share of the GPU's memory the engine may take; by default what
            is free when the engine starts, less a margin of ``MEMORY_MARGIN_BYTES`` (so an
            engine never asks for memory another process holds).
        max_num_seqs: most sequences decoded at once.
        tensor_parallel_size: GPUs to split the model over.
        enforce_eager: no CUDA graphs / compilation (needed on the CPU build).
        kv_cache_memory_bytes: fixed KV-cache size (the CPU build needs one).
        limit_mm_per_prompt: most items per modality in one prompt, e.g. ``{"image": 4}``.
        seed: the engine's seed (each request also carries its own).
        trust_remote_code: allow a model's own code from the hub.
        use_chat_template: False sends the messages' raw text through ``LLM.generate``.
    """

    model: str
    revision: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    kv_cache_memory_bytes: int | None = None
    limit_mm_per_prompt: dict[str, int] | None = None
    seed: int = 0
    trust_remote_code: bool = False
    use_chat_template: bool = True

    def __post_init__(self) -> None:
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` (unset ones left to vLLM's defaults)."""
        args = {k: v for k, v in asdict(self).items() if k not in _CALL_OPTIONS}
        return {k: v for k, v in args.items() if v is not None}


class VLLMBackend:
    """A vLLM engine behind the backend protocol.

    Example:
        >>> llm = load_backend({"backend": "vllm", "model": "Qwen/Qwen2-VL-7B-Instruct",
        ...                     "max_model_len": 8192, "limit_mm_per_prompt": {"image": 1}})
        >>> llm.generate([ChatRequest.from_prompt("Describe.", images=[photo])])[0].text
    """

    def __init__(self, options: Options, engine: Any) -> None:
        self.options = options
        self.engine = engine
        self.identity = identity(options)

    def __repr__(self) -> str:
        return f"VLLMBackend(identity={self.identity!r})"

    def shutdown(self) -> None:
        """Stop the engine's processes now (frees their memory); every backend sharing the
        engine stops working. Without it they stop when the interpreter exits, or when a run
        releases the engine (``Resources.release``)."""
        stop_engine(self.engine)

    def generate(self, requests: list[ChatRequest]) -> list[Generation]:
        """Run the batch in one engine call; results come back in request order."""
        requests = check_batch("VLLMBackend", requests, beam_search=False)
        if not requests:
            return []
        try:
            params = [_sampling_params(req) for req in requests]
            if self.options.use_chat_template:
                conversations = [[_message(m) for m in req.messages] for req in requests]
                outputs = self.engine.chat(conversations, sampling_params=params, use_tqdm=False)
            else:
                prompts = [_raw_prompt(req) for req in requests]
                outputs = self.engine.generate(prompts, sampling_params=params, use_tqdm=False)
        except (ValueError, *_client_errors()) as exc:  # bad prompts or sampling settings
            raise BackendError(f"vLLM refused the batch for {self.options.model}: {exc}") from exc
        return [_generation(out, req) for out, req in zip(outputs, requests, strict=True)]


def _client_errors() -> tuple[type[Exception], ...]:
    """vLLM's errors about a request the caller got wrong (not all are ValueErrors)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM releases raise ValueError only
        return ()
    return (VLLMClientError,)


def _sampling_params(req: ChatRequest):
    from vllm import SamplingParams

    kwargs: dict[str, Any] = dict(
        n=req.n if req.sampled else 1,  # greedy samples are all alike: one, repeated
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens,
        min_tokens=req.min_tokens,
        stop=list(req.stop) or None,
        seed=req.seed,
        logprobs=req.logprobs or None,
    )
    if req.json_mode:
        from vllm.sampling_params import StructuredOutputsParams

        kwargs["structured_outputs"] = StructuredOutputsParams(json_object=True)
    return SamplingParams(**kwargs)


def _message(message) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [
        {"type": "image_pil", "image_pil": value}
        if kind == "image"
        else {"type": "text", "text": value}
        for kind, value in message.parts()
    ]
    return {"role": message.role, "content": parts}


def _raw_prompt(req: ChatRequest) -> dict[str, Any]:
    prompt: dict[str, Any] = {"prompt": req.prompt_text}
    if req.images:  # the prompt text must hold the model's image placeholders
        prompt["multi_modal_data"] = {"image": req.images}
    return prompt


def _generation(output, req: ChatRequest) -> Generation:
    samples = list(output.outputs)
    samples = samples * (req.n // len(samples))  # greedy: one answer stands for all n
    logprobs = [_first_logprobs(s, req.logprobs) for s in samples] if req.logprobs else None
    return Generation(
        texts=[s.text.strip() for s in samples],
        first_token_logprobs=logprobs,
        prompt_tokens=len(output.prompt_token_ids or []),
        completion_tokens=sum(len(s.token_ids) for s in samples),
    )


def _first_logprobs(sample, k: int) -> dict[str, float]:
    """The top-k first-token candidates (vLLM adds the sampled token when it is not among them)."""
    if not sample.logprobs:
        return {}
    ranked = sorted(sample.logprobs[0].values(), key=lambda lp: lp.logprob, reverse=True)
    row: dict[str, float] = {}
    for lp in ranked[:k]:
        row.setdefault(lp.decoded_token or "", float(lp.logprob))
    return row


def load_engine(options: Options, resources: Resources | None = None):
    """The ``vllm.LLM`` for these engine arguments, loaded once per ``resources``."""
    args = options.engine_args()
    key = ("vllm-engine", json.dumps(args, sort_keys=True))
    return (resources or default_resources).get(key, lambda: _start_engine(args), stop_engine)


def stop_engine(engine: Any) -> None:
    """Shut a ``vllm.LLM`` engine's worker processes down (its GPU memory is returned)."""
    core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def _start_engine(args: dict[str, Any]):
    try:
        from vllm import LLM
    except ImportError as exc:
        raise ConfigError(
            f"the vllm backend needs vLLM ({exc}): pip install 'cir[vllm]' on a GPU machine, or "
            "run scripts/setup_vllm_env.sh for the CPU build (see docs/backends.md)"
        ) from None
    if "gpu_memory_utilization" not in args:
        share = free_memory_share()
        if share is not None:
            args = {**args, "gpu_memory_utilization": share}
    try:
        return LLM(**args)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BackendError(
            f"vLLM could not start {args['model']!r}: {exc}. Check the model path or id, "
            "max_model_len and the memory settings (gpu_memory_utilization, "
            "kv_cache_memory_bytes)."
        ) from exc


def free_memory_share(margin: int = MEMORY_MARGIN_BYTES) -> float | None:
    """The share of the GPU's memory that is free now, less ``margin`` (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    share = (free - margin) / total
    if share < 0.05:
        raise BackendError(
            f"only {free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB GPU memory is free; "
            "a vLLM engine cannot start. Free the GPU or set gpu_memory_utilization explicitly."
        )
    return round(min(share, 0.95), 4)


def identity(options: Options) -> str:
    """The backend's identity for ``options`` (cache keys), without starting an engine."""
    rev = f"@{options.revision}" if options.revision else ""
    raw = "" if options.use_chat_template else ":raw"
    return f"vllm:{options.model}{rev}:{options.dtype}{raw}"


def build(options: Options, resources: Resources | None = None) -> VLLMBackend:
    """The backend for a validated spec; its engine is shared through ``resources``."""
    return VLLMBackend(options, load_engine(options, resources))
