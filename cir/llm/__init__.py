"""Language backends (captioners, LLMs, multimodal LLMs) behind one small protocol.

Example:
    >>> from cir.llm import ChatRequest, load_backend
    >>> llm = load_backend({"backend": "transformers", "model": "Qwen/Qwen2.5-0.5B-Instruct"})
    >>> llm.generate([ChatRequest.from_prompt("Describe a red dress in five words.")])[0].text
"""

from cir.llm.base import (
    ChatMessage,
    ChatRequest,
    Generation,
    LLMBackend,
    Sampling,
    backend_identity,
    backend_names,
    load_backend,
    spec_key,
    validate_spec,
)
from cir.llm.scripted import ScriptedLLM

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Generation",
    "LLMBackend",
    "Sampling",
    "ScriptedLLM",
    "backend_identity",
    "backend_names",
    "load_backend",
    "spec_key",
    "validate_spec",
]
