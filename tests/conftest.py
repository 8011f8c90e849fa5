"""Shared fixtures: tiny models built from configs, real sample photos, opt-in test groups."""

from __future__ import annotations

import os
import tempfile
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


def pytest_configure(config: pytest.Config) -> None:
    # The suite never reads or writes the user's content cache.
    if not os.environ.get("CIR_TEST_KEEP_CACHE_DIR"):
        os.environ["CIR_CACHE_DIR"] = tempfile.mkdtemp(prefix="cir-test-cache-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for group, why in _GROUPS.items():
            marked = item.get_closest_marker(group) is not None
            if marked and not config.getoption(f"--run-{group}"):
                item.add_marker(pytest.mark.skip(reason=f"{why}; run with --run-{group}"))


#: Miniature benchmark files in the official formats, invented for the tests (always present).
FIXTURE_BENCHMARKS = REPO / "tests" / "fixtures" / "benchmarks"


def official_benchmarks_root() -> Path:
    """Where the official annotation files are looked for: ``$CIR_BENCHMARKS_ROOT``, else
    ``shared/benchmarks`` beside the repository."""
    return Path(os.environ.get("CIR_BENCHMARKS_ROOT") or REPO.parent / "shared" / "benchmarks")


@pytest.fixture(scope="session")
def benchmarks_root() -> Path:
    """The official annotation files; the test is skipped (with the reason) where they are absent,
    and fails instead when ``CIR_REQUIRE_BENCHMARKS=1`` (CI, where they must be present)."""
    root = official_benchmarks_root()
    if (root / "cirr").is_dir():
        return root
    message = (
        f"official benchmark annotation files not found at {root} "
        "(set CIR_BENCHMARKS_ROOT to run the tests that check cir against them)"
    )
    if os.environ.get("CIR_REQUIRE_BENCHMARKS") == "1":
        pytest.fail(message + "; CIR_REQUIRE_BENCHMARKS=1 requires them")
    pytest.skip(message)


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    """The miniature benchmark files committed under ``tests/fixtures/benchmarks``."""
    return FIXTURE_BENCHMARKS


@pytest.fixture(scope="session", params=["fixtures", "official"])
def annotations(request: pytest.FixtureRequest) -> Path:
    """Both annotation roots in turn: the committed fixtures, then the official files (skipped
    with a reason where absent)."""
    if request.param == "fixtures":
        return FIXTURE_BENCHMARKS
    return request.getfixturevalue("benchmarks_root")


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
