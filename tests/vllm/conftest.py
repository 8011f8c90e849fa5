"""Tests that run inside the vLLM CPU environment (scripts/setup_vllm_env.sh creates it).

Run them with that environment's interpreter:
    .venv-vllm/bin/python -m pytest tests/vllm --run-vllm
"""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="session", autouse=True)
def _vllm_installed(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--run-vllm"):
        return
    if importlib.util.find_spec("vllm") is None:
        pytest.fail(
            "vLLM is not importable in this interpreter: run scripts/setup_vllm_env.sh, then "
            ".venv-vllm/bin/python -m pytest tests/vllm --run-vllm",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from cir.testing.lm import tiny_causal_lm, tiny_chat_vlm

    root = tmp_path_factory.mktemp("vllm_models")
    return {"lm": tiny_causal_lm(root / "lm"), "vlm": tiny_chat_vlm(root / "vlm")}


@pytest.fixture
def texts_of():
    """Texts of generations without a trailing U+FFFD, to compare two engines: detokenizers
    differ only in whether a final, incomplete UTF-8 byte sequence (random weights produce
    them) shows as a replacement character."""

    def texts(gens):
        return [[t.rstrip("\ufffd") for t in g.texts] for g in gens]

    return texts
