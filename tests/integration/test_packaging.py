"""A plain (non-editable) install carries the shipped pipelines and prompts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# BASIC's corpora, LAION means, licence and provenance ship inside the package.
BASIC_FILES = (
    "objects.txt", "styles.txt", "generic_subjects.csv", "generic_styles.csv",
    "laion_1m_mean_clip_vitl14.npy", "laion_1m_mean_siglip_vitl16_256.npy",
    "laion_textual_mean.npy", "LICENSE.icir", "README.md",
)  # fmt: skip


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    site = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dist), str(REPO)], check=True)
    wheels = list(dist.glob("cir-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheels[0])], check=True
    )
    return site


def test_installed_wheel_finds_shipped_pipelines_and_prompts(wheel_site: Path, tmp_path: Path):
    code = (
        "import cir, cir.pipeline as p, cir._paths as paths;"
        f"assert cir.__file__.startswith({str(wheel_site)!r}), cir.__file__;"
        "print(sorted(p.list_pipelines()));"
        "print(cir.load_pipeline('clip_fusion'));"
        "print(sorted(x.name for x in paths.shipped_dir('prompts').iterdir()));"
        "print((paths.shipped_dir('demos') / 'app.py').is_file());"
        "import importlib.resources as r;"
        "basic = r.files('cir').joinpath('data/basic');"
        f"print(all(basic.joinpath(n).is_file() for n in {BASIC_FILES!r}));"
        "print(r.files('cir').joinpath('bench/download/sources.yaml').is_file())"
    )
    env = dict(os.environ, PYTHONPATH=str(wheel_site))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    shipped = sorted(p.stem for p in (REPO / "pipelines").glob("*.yaml"))
    assert lines[0] == str(shipped)
    assert "clip_fusion" in lines[1]
    assert lines[2] == str(sorted(p.name for p in (REPO / "prompts").iterdir()))
    # the demo app, BASIC's corpora and the download sources are in the wheel
    assert lines[3:] == ["True", "True", "True"]
