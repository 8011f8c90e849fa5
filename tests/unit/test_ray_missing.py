"""Without Ray installed, asking for it is one clear error and nothing is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # import ray now fails as it does where Ray is not installed
from click.testing import CliRunner
from cir.cli import cli
result = CliRunner().invoke(cli, ["index", "build", sys.argv[1], "--model", "x", "--out",
                                  sys.argv[2], "--ray"])
print(result.exit_code, result.output)
"""


def test_ray_option_without_ray_says_what_to_install(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    out = tmp_path / "index"
    args = [sys.executable, "-c", _WITHOUT_RAY, str(photos), str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    code, _, output = done.stdout.partition(" ")
    assert code == "1", done.stdout + done.stderr
    assert "pip install 'cir[ray]'" in output and "Traceback" not in output
    assert not out.exists()
