"""The bad-input suite: every test feeds cir one hostile or broken input and checks that it is
handled cleanly (a clear ``cir.errors`` message, a skipped-and-reported file, a refused request)
and that nothing of the user's is lost.

The end of a run prints the tally ``docs/bad-input.md`` quotes: inputs tried (one per test),
handled cleanly (passed) and data lost (failed tests marked ``user_data``, which guard the user's
files). To add a case, add a row to the case table of the module of its area, or a test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_TALLY = {"tried": 0, "clean": 0, "data_lost": 0, "failed": []}
_HERE = Path(__file__).parent


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.nodeid.startswith("tests/badinput/") or report.skipped:
        return
    if report.when == "call" or (report.when == "setup" and report.failed):
        _TALLY["tried"] += 1
        if report.passed:
            _TALLY["clean"] += 1
        else:
            _TALLY["failed"].append(report.nodeid)
            if "user_data" in report.keywords:
                _TALLY["data_lost"] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    if _TALLY["tried"]:
        terminalreporter.write_line(
            f"bad inputs: {_TALLY['tried']} tried, {_TALLY['clean']} handled cleanly, "
            f"{_TALLY['data_lost']} with data lost"
        )


# ---------------------------------------------------------------------- helpers for the cases
def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) → sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def photo(path: Path, seed: int = 0, size: tuple[int, int] = (40, 32), fmt: str | None = None):
    """A small random colour image at ``path`` (folders created)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def photos(folder: Path, n: int = 4) -> Path:
    for i in range(n):
        photo(folder / f"img{i:03d}.{'png' if i % 2 else 'jpg'}", seed=i)
    return folder


def one_line_error(result, *expected: str) -> str:
    """Check a CliRunner result is a user error: non-zero exit, no traceback, the words given."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for words in expected:
        assert words in result.output, result.output
    return result.output


@pytest.fixture(scope="session")
def encoder(tiny_clip):
    from cir.models import load_encoder

    return load_encoder(tiny_clip)
