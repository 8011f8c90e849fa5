"""``cir index build`` / ``cir index info`` through click and as a real command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cir.cli import cli
from cir.index import GalleryIndex


def _folder(root: Path, n: int = 5) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"p{i}.png")
    (root / "broken.jpg").write_text("not a jpeg")
    return root


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_build_then_info(tmp_path, tiny_clip):
    folder = _folder(tmp_path / "photos")
    out = tmp_path / "idx"
    res = _run(
        "index",
        "build",
        str(folder),
        "--model",
        tiny_clip,
        "--out",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert "indexed 5 images" in res.output and "broken.jpg: not an image" in res.output
    assert GalleryIndex.load(out).ids == [f"p{i}.png" for i in range(5)]
    info = _run("index", "info", str(out))
    assert info.exit_code == 0
    assert "images          5" in info.output and "local-dir" in info.output
    assert "skipped files   1" in info.output
    assert "compute path    fp32 for every batch (small gallery)" in info.output
    assert "CPU flags" in info.output and "search device   cpu: " in info.output
    manifest = json.loads(_run("index", "info", str(out), "--json").output)
    assert manifest["count"] == 5 and manifest["dtype"] == "fp16"
    assert manifest["search"]["machine"]["device"] == "cpu"


def test_info_calibrates_once_per_machine_and_recalibrates_on_request(tmp_path, monkeypatch):
    """A gallery large enough to calibrate: real timings, cached in the cir cache folder."""
    monkeypatch.setenv("CIR_CACHE_DIR", str(tmp_path / "cache"))
    rows = torch.nn.functional.normalize(torch.randn(9000, 512), dim=1)
    GalleryIndex.from_embeddings([f"i{n}" for n in range(9000)], rows).save(tmp_path / "idx")
    first = json.loads(_run("index", "info", str(tmp_path / "idx"), "--json").output)["search"]
    assert first["compute"].endswith("(calibrated)") or first["compute"].endswith("candidate)")
    if first["compute"].endswith("(calibrated)"):
        (cached,) = (tmp_path / "cache" / "compute").iterdir()
        timings = json.loads(cached.read_text())["timings"]
        assert set(timings) == set(first["seconds_per_query"]) and "fp32" in timings
        again = _run("index", "info", str(tmp_path / "idx"))
        assert "(cached)" in again.output
        redo = _run("index", "info", str(tmp_path / "idx"), "--recalibrate")
        assert "(calibrated)" in redo.output


def test_unknown_compute_path_is_a_one_line_error(tmp_path):
    GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, 8)).save(tmp_path / "idx")
    args = ["search", "--text", "red", "--index", str(tmp_path / "idx"), "--compute", "int8"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "unknown compute path 'int8'; valid: auto, fp32, fp16, bf16, faiss" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index", "build", "{missing}", "--model", "{model}", "--out", "{out}"], "does not exist"),
        (["index", "build", "{empty}", "--model", "{model}", "--out", "{out}"], "no image files"),
        (
            ["index", "build", "{photos}", "--model", "NoSuchModel-99", "--out", "{out}"],
            "NoSuchModel-99",
        ),
        (["index", "info", "{missing}"], "no gallery index"),
        (["index", "info", "{empty}"], "not a complete gallery index"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, tiny_clip, args, message):
    (tmp_path / "empty").mkdir()
    _folder(tmp_path / "photos", n=1)
    names = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "model": tiny_clip,
        "photos": tmp_path / "photos",
        "out": tmp_path / "out",
    }
    res = CliRunner().invoke(cli, [a.format(**names) for a in args])
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)


def test_interrupted_build_resumes_from_the_cli(tmp_path, tiny_clip):
    from cir.index.build import BuildInterrupted
    from cir.models import load_encoder

    folder = _folder(tmp_path / "photos", n=6)
    out = tmp_path / "idx"
    with pytest.raises(BuildInterrupted):
        GalleryIndex.build(
            folder,
            load_encoder(tiny_clip),
            out=out,
            batch_size=2,
            shard_size=2,
            num_workers=0,
            progress=False,
            interrupt_after_shards=1,
        )
    res = _run("index", "info", str(out))
    assert res.exit_code != 0 and "--resume" in res.output
    res = _run(
        "index",
        "build",
        str(folder),
        "--model",
        tiny_clip,
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
    )
    assert res.exit_code == 0 and "indexed 6 images" in res.output


@pytest.mark.slow
def test_real_cir_command(tmp_path, tiny_clip):
    exe = shutil.which("cir", path=str(Path(sys.executable).parent))
    assert exe, "the cir console script is not installed in this environment"
    folder = _folder(tmp_path / "photos", n=3)
    out = tmp_path / "idx"
    build = subprocess.run(
        [
            exe,
            "index",
            "build",
            str(folder),
            "--model",
            tiny_clip,
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    assert "indexed 3 images" in build.stdout
    assert GalleryIndex.load(out).ids == ["p0.png", "p1.png", "p2.png"]
    bad = subprocess.run(
        [exe, "index", "info", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error: no gallery index") and "Traceback" not in bad.stderr
