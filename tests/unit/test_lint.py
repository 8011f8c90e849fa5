"""The code base stays ruff-clean (lint and format), as the contributing rules require."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FOLDERS = ["cir", "tests", "benchmarks", "examples", "demos"]


def _ruff() -> list[str]:
    beside_python = Path(sys.executable).parent / "ruff"
    return [str(beside_python) if beside_python.exists() else shutil.which("ruff") or "ruff"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    result = subprocess.run(
        [*_ruff(), *command, *FOLDERS], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
