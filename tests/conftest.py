"""Shared fixtures: tiny models built from configs, real sample photos, opt-in test groups."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_GROUPS = {
    "gpu": "needs a CUDA GPU and real weights",
    "vllm": "needs the vLLM CPU virtual environment (scripts/setup_vllm_env.sh)",
    "browser": "needs Debian's Chromium and Playwright",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    for group, why in _GROUPS.items():
        parser.addoption(f"--run-{group}", action="store_true", help=f"run tests that {why}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for group, why in _GROUPS.items():
            marked = item.get_closest_marker(group) is not None
            if marked and not config.getoption(f"--run-{group}"):
                item.add_marker(pytest.mark.skip(reason=f"{why}; run with --run-{group}"))


@pytest.fixture(scope="session")
def benchmarks_root() -> Path:
    """The official annotation files (``shared/benchmarks`` beside the repository)."""
    root = Path(os.environ.get("CIR_BENCHMARKS_ROOT", REPO.parent / "shared" / "benchmarks"))
    if not (root / "cirr").is_dir():
        pytest.fail(f"benchmark annotation files not found at {root}; set CIR_BENCHMARKS_ROOT")
    return root


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random open_clip model saved to disk, as a ``local-dir:`` spec."""
    from cir.testing.clip import tiny_open_clip

    return tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_clip: str) -> dict[str, str]:
    """Tiny random captioner, LLM, chat VLM and CLIP saved to disk: name -> model path or spec."""
    from cir.testing.lm import tiny_blip_captioner, tiny_causal_lm, tiny_chat_vlm

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "blip": tiny_blip_captioner(root / "blip"),
        "lm": tiny_causal_lm(root / "lm"),
        "vlm": tiny_chat_vlm(root / "vlm"),
        "clip": tiny_clip,
    }


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of real colour photos gathered from installed packages."""
    from cir.sample_gallery import gather_sample_photos

    folder = tmp_path_factory.mktemp("sample_photos")
    gather_sample_photos(folder)
    return folder


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, sample_photos: Path, tiny_clip: str):
    """A gallery index over the sample photos, built with the tiny CLIP model."""
    from cir.index import GalleryIndex
    from cir.models import load_encoder

    out = tmp_path_factory.mktemp("sample_index")
    return GalleryIndex.build(sample_photos, load_encoder(tiny_clip), out=out, num_workers=0)
