"""A fresh clone with no ``shared/`` beside it runs the benchmark tests green: the committed
fixtures carry them, and the tests of the official files say they were skipped and why.

The clone is of the committed ``HEAD`` (uncommitted changes are not part of it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCH_TESTS = sorted(
    str(p.relative_to(REPO))
    for p in [
        *REPO.glob("tests/unit/test_bench_*.py"),
        REPO / "tests/integration/test_bench_run.py",
    ]
)


def _git(*args: str, cwd: Path = REPO) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("the repository is not a git checkout (an unpacked sdist?): nothing to clone")
    folder = tmp_path_factory.mktemp("fresh") / "cir"
    head = _git("rev-parse", "HEAD")
    _git("clone", "--quiet", "--no-checkout", str(REPO), str(folder))
    _git("checkout", "--quiet", "--detach", head, cwd=folder)
    assert not (folder.parent / "shared").exists()
    return folder


def test_benchmark_tests_pass_in_a_fresh_clone_without_shared(clone: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIR_")}
    env["PYTHONPATH"] = str(clone)
    cmd = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *BENCH_TESTS]
    run = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    tail = run.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", tail)[1])
    skipped = int(re.search(r"(\d+) skipped", tail)[1])
    assert passed >= 30 and skipped >= 2, tail
    assert "failed" not in tail and "error" not in tail
    reason = "official benchmark annotation files not found at " + str(clone.parent / "shared")
    assert reason in run.stdout  # each skip says why (-ra)


def test_clone_imports_its_own_cir(clone: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIR_")}
    env["PYTHONPATH"] = str(clone)
    code = "import cir; print(cir.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == str(clone / "cir" / "__init__.py")
