"""The backend protocol's value types and spec validation."""

import importlib.util

import pytest
from PIL import Image

from cir.errors import ConfigError
from cir.llm import (
    ChatMessage,
    ChatRequest,
    Generation,
    Sampling,
    ScriptedLLM,
    backend_names,
    load_backend,
    spec_key,
)
from cir.llm.base import validate_spec
from cir.resources import Resources


def test_request_defaults_repeat_runs():
    req = ChatRequest.from_prompt("hi")
    assert (req.temperature, req.seed, req.n, req.top_p, req.logprobs) == (0.0, 0, 1, 1.0, 0)
    assert not req.sampled and req.sampling == Sampling()
    assert req.settings() == {
        "max_tokens": 256,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "n": 1,
        "json_mode": False,
        "logprobs": 0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n must be"),
        ({"logprobs": -1}, "logprobs"),
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 3, "temperature": 1.0}, "beam search"),
    ],
)
def test_request_rejects_bad_sampling(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChatRequest.from_prompt("hi", **kwargs)


def test_request_needs_messages():
    with pytest.raises(ValueError, match="non-empty"):
        ChatRequest(())
    with pytest.raises(ValueError, match="non-empty"):
        ChatRequest(("just a string",))


def test_message_checks_role_and_content_and_freezes_images(tmp_path):
    with pytest.raises(ValueError, match="role"):
        ChatMessage("robot", "x")
    with pytest.raises(TypeError, match="content must be a string"):
        ChatMessage("user", ["x"])
    path = tmp_path / "a.png"
    Image.new("L", (4, 4)).save(path)
    msg = ChatMessage("user", "look", [Image.new("RGB", (2, 2)), path])
    assert isinstance(msg.images, tuple) and len(msg.images) == 2
    assert msg.images[1].mode == "RGB"
    with pytest.raises(TypeError, match="PIL images or paths"):
        ChatMessage("user", "x", (b"bytes",))


def test_request_images_and_prompt_text_keep_order():
    a, b = Image.new("RGB", (1, 1)), Image.new("RGB", (2, 2))
    req = ChatRequest(
        (
            ChatMessage("system", "rules"),
            ChatMessage("user", "one", (a,)),
            ChatMessage("user", "two", (b,)),
        )
    )
    assert req.images == [a, b]
    assert req.prompt_text == "rules\n\none\n\ntwo"


def test_generation_text_is_first_sample():
    assert Generation(["x", "y"]).text == "x"


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid backends: openai, scripted, transformers, vllm"):
        load_backend({"backend": "llamacpp", "model": "m"})
    with pytest.raises(ConfigError, match="mapping with a 'backend' key"):
        load_backend("vllm")
    assert backend_names() == ["openai", "scripted", "transformers", "vllm"]


@pytest.mark.parametrize("backend", ["transformers", "openai", "vllm"], ids=lambda b: f"{b}-spec")
def test_unknown_option_lists_valid_ones(backend):
    message = rf"LLM backend '{backend}': unknown parameter\(s\) tempo"
    with pytest.raises(ConfigError, match=message):
        validate_spec({"backend": backend, "model": "m", "tempo": 3})


@pytest.mark.parametrize("backend", ["transformers", "openai", "vllm"], ids=lambda b: f"{b}-spec")
def test_model_is_required(backend):
    with pytest.raises(ConfigError, match="model"):
        validate_spec({"backend": backend})


def test_mistyped_option_is_reported():
    with pytest.raises(ConfigError, match="'max_concurrency' must be int"):
        validate_spec({"backend": "openai", "model": "m", "max_concurrency": "8"})


def test_spec_key_ignores_key_order_and_fills_defaults():
    a = spec_key({"backend": "vllm", "model": "m", "dtype": "float32"})
    b = spec_key({"dtype": "float32", "model": "m", "backend": "vllm"})
    assert a == b
    assert '"max_model_len"' in a[1]
    assert spec_key({"backend": "vllm", "model": "m"}) != a


def test_vllm_engine_args_leave_out_per_call_options():
    _, options = validate_spec(
        {"backend": "vllm", "model": "m", "use_chat_template": False, "max_model_len": 256}
    )
    assert options.engine_args() == {
        "model": "m",
        "dtype": "auto",
        "max_model_len": 256,
        "tensor_parallel_size": 1,
        "enforce_eager": False,
        "seed": 0,
        "trust_remote_code": False,
    }  # gpu_memory_utilization unset: chosen from the free memory when the engine starts


def test_engine_memory_share_comes_from_free_memory_on_a_gpu():
    import torch

    from cir.llm.vllm_backend import free_memory_share

    share = free_memory_share()
    assert share is None if not torch.cuda.is_available() else 0.05 <= share <= 0.95


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed in this environment"
)
def test_vllm_backend_without_vllm_says_how_to_install_it():
    with pytest.raises(ConfigError, match=r"pip install 'cir\[vllm\]'.*setup_vllm_env\.sh"):
        load_backend({"backend": "vllm", "model": "m"}, resources=Resources())


def test_beam_search_is_refused_where_a_backend_cannot_search():
    from cir.llm.base import check_batch

    beams = ChatRequest.from_prompt("hi", num_beams=4)
    assert beams.num_beams == 4 and "num_beams" in beams.settings()
    assert "num_beams" not in ChatRequest.from_prompt("hi").settings()  # old cache keys hold
    assert check_batch("x", [beams]) == [beams]
    with pytest.raises(ConfigError, match="beam search"):
        check_batch("VLLMBackend", [beams], beam_search=False)
    assert ScriptedLLM(default="ok").generate([beams])[0].text == "ok"
