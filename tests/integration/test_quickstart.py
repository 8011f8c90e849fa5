"""The README's main job (`make search`) runs offline with a model given by local path."""

from __future__ import annotations

import subprocess
import sys

from cir.sample_gallery import SAMPLE_QUERIES
from tests.conftest import REPO


def test_quickstart_builds_an_index_and_prints_rankings(tiny_clip, tmp_path):
    command = [sys.executable, "examples/quickstart.py", "--model", tiny_clip, "-k", "3"]
    command += ["--work-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "gallery:" in out and "index:" in out
    for name, text in SAMPLE_QUERIES:
        assert f"{name} + {text!r}" in out
    assert out.count("  1. ") == len(SAMPLE_QUERIES) and out.count("  3. ") == len(SAMPLE_QUERIES)
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.stdout == out  # the saved index is reused and gives the same rankings


def test_quickstart_reports_a_bad_model_without_a_traceback(tmp_path):
    command = [sys.executable, "examples/quickstart.py", "--model", str(tmp_path / "missing")]
    done = subprocess.run(
        [*command, "--work-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "error:" in done.stderr and "Traceback" not in done.stderr
