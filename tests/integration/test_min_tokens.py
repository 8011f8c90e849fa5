"""``min_tokens``: a sampling setting that makes a real model write at least that many tokens."""

from __future__ import annotations

import pytest
import torch

from cir.errors import ConfigError
from cir.llm import ChatRequest, Sampling, load_backend
from cir.resources import Resources


def test_min_tokens_is_checked_and_keys_the_cache_only_when_used():
    assert "min_tokens" not in Sampling().to_dict()  # old cache keys stay valid
    assert Sampling(max_tokens=30, min_tokens=1).to_dict()["min_tokens"] == 1
    with pytest.raises(ValueError, match=r"min_tokens must be within \[0, max_tokens=4\]"):
        Sampling(max_tokens=4, min_tokens=5)


@pytest.fixture(scope="module")
def eager_to_stop(tmp_path_factory) -> str:
    """A tiny LM whose end token is its likeliest next token almost everywhere."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cir.testing.lm import tiny_causal_lm

    path = tiny_causal_lm(tmp_path_factory.mktemp("eager") / "lm")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokens = AutoTokenizer.from_pretrained(path)(
        "Describe a red dress. a b c d e f", return_tensors="pt"
    )
    with torch.no_grad():  # the (tied) end-token row points along the typical final state
        weight = model.get_input_embeddings().weight
        weight[model.config.eos_token_id] = 0
        state = model.model(**tokens).last_hidden_state[0].mean(dim=0)
        weight[model.config.eos_token_id] = 50 * state / state.norm()
    model.save_pretrained(path)
    return path


def test_a_transformers_model_writes_at_least_min_tokens(eager_to_stop):
    llm = load_backend({"backend": "transformers", "model": eager_to_stop}, Resources())
    for prompt in ("a", "Describe a red dress.", "hello"):
        (free,) = llm.generate([ChatRequest.from_prompt(prompt, max_tokens=8)])
        (held,) = llm.generate([ChatRequest.from_prompt(prompt, max_tokens=8, min_tokens=5)])
        assert free.completion_tokens < 5 <= held.completion_tokens, prompt


def test_the_openai_api_refuses_min_tokens():
    llm = load_backend({"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"})
    request = ChatRequest.from_prompt("hi", max_tokens=5, min_tokens=1)
    with pytest.raises(ConfigError, match="no minimum answer length"):
        llm.generate([request])
