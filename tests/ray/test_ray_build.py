"""Gallery builds on a local Ray cluster equal local builds, and a killed one resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from click.testing import CliRunner

from cir.index import GalleryIndex
from cir.models import load_encoder

REPO = Path(__file__).resolve().parents[2]
SIZES = {"batch_size": 2, "shard_size": 4, "progress": False}


def _local(photos: Path, clip: str, out: Path) -> GalleryIndex:
    return GalleryIndex.build(photos, load_encoder(clip), out=out, num_workers=0, **SIZES)


def _assert_same(built: GalleryIndex, local: GalleryIndex) -> None:
    assert built.ids == local.ids
    assert [built.path(i) for i in built.ids] == [local.path(i) for i in local.ids]
    assert built.embeddings.dtype == local.embeddings.dtype == torch.float16
    assert torch.equal(built.embeddings, local.embeddings)
    assert built.skipped == local.skipped


def test_ray_build_equals_local_build(sample_photos, tiny_clip, ray_cluster, tmp_path) -> None:
    (sample_photos / "broken.jpg").write_bytes(b"not an image")  # skipped the same way
    try:
        local = _local(sample_photos, tiny_clip, tmp_path / "local")
        on_ray = GalleryIndex.build(
            sample_photos, load_encoder(tiny_clip), out=tmp_path / "ray", ray=True, **SIZES
        )
    finally:
        (sample_photos / "broken.jpg").unlink()
    assert len(local) >= 10 and [s["path"] for s in local.skipped][-1].endswith("broken.jpg")
    _assert_same(on_ray, local)
    assert not (tmp_path / "ray" / "build").exists()  # the shards were merged and removed


_KILLED_BUILD = """
import sys
import ray
from cir.index.build import build_index
from cir.models import load_encoder

ray.init(address=sys.argv[1], log_to_driver=False)
build_index(sys.argv[2], load_encoder(sys.argv[3]), sys.argv[4], batch_size=1, shard_size=1,
            ray=True, progress=False)
"""


def test_killed_ray_build_resumes_to_the_same_index(
    sample_photos, tiny_clip, ray_cluster, tmp_path
) -> None:
    out = tmp_path / "ray"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", _KILLED_BUILD, ray_cluster, sample_photos, tiny_clip, out]
    driver = subprocess.Popen([str(a) for a in args], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "build").glob("shard-*.json")) and driver.poll() is None:
        assert time.monotonic() < deadline, "no shard was written in 120 s"
        time.sleep(0.005)
    driver.send_signal(signal.SIGKILL)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL, err.decode()[-2000:]
    written = sorted(p.name for p in (out / "build").glob("shard-*.json"))
    total = len(list(sample_photos.iterdir()))
    assert 1 <= len(written) < total and not (out / "manifest.json").exists()
    resumed = GalleryIndex.build(
        sample_photos, load_encoder(tiny_clip), out=out, ray=True, batch_size=1, shard_size=1
    )
    _assert_same(resumed, _local(sample_photos, tiny_clip, tmp_path / "local"))


def test_cli_build_on_ray(sample_photos, tiny_clip, ray_cluster, tmp_path) -> None:
    from cir.cli import cli

    out = tmp_path / "cli"
    args = ["index", "build", str(sample_photos), "--model", tiny_clip, "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--ray", "--no-progress", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "on Ray" in result.output
    _assert_same(GalleryIndex.load(out), _local(sample_photos, tiny_clip, tmp_path / "local"))


def test_ray_build_of_shards_equals_local_build(sample_photos, tiny_clip, ray_cluster, tmp_path):
    """webdataset tar and parquet shards, read in place by the Ray decode tasks."""
    from cir.testing.shards import write_shards

    write_shards(sample_photos, tmp_path / "shards", kind="tar", per_shard=5)
    write_shards(sample_photos, tmp_path / "shards" / "pq", kind="parquet", per_shard=7)
    local = _local(tmp_path / "shards", tiny_clip, tmp_path / "local")
    on_ray = GalleryIndex.build(
        tmp_path / "shards", load_encoder(tiny_clip), out=tmp_path / "ray", ray=True, **SIZES
    )
    assert any(".tar/" in i for i in local.ids) and any(".parquet/" in i for i in local.ids)
    _assert_same(on_ray, local)
