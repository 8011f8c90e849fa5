"""``cir index import-clip-retrieval``, ``cir index ann``, ``cir index export-milvus`` and
``cir search --backend`` end to end, with the tiny CLIP over the sample photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cir.cli import cli
from cir.index import GalleryIndex
from cir.sample_gallery import SAMPLE_QUERIES

pytest.importorskip("faiss")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")
pytest.importorskip("milvus_lite")


def _run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _clip_retrieval_folder(index: GalleryIndex, folder):
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "img_emb" / "img_emb_0.npy", index.embeddings.cpu().numpy())
    paths = [str(index.path(i)) for i in index.ids]
    pq.write_table(pa.table({"image_path": paths}), folder / "metadata" / "metadata_0.parquet")


def test_import_ann_milvus_and_search(sample_index, sample_photos, tiny_clip, tmp_path):
    _clip_retrieval_folder(sample_index, tmp_path / "clip_out")
    out = tmp_path / "imported"
    said = _run("index", "import-clip-retrieval", tmp_path / "clip_out", "--out", out,
                "--model", tiny_clip)  # fmt: skip
    assert f"imported {len(sample_index)} embeddings" in said
    imported = GalleryIndex.load(out)
    assert imported.encoder_key == sample_index.encoder_key
    assert "built IVF" in _run("index", "ann", out, "--max-index-memory", "1MB")
    db = tmp_path / "gallery.db"
    assert "exported" in _run("index", "export-milvus", out, "--uri", db)
    photo, text = SAMPLE_QUERIES[0]
    query = ["search", "--index", out, "--image", sample_photos / photo, "--text", text]
    query += ["--pipeline", "clip_fusion", "-k", "5", "--json"]
    exact = json.loads(_run(*query))
    for backend in ("ivfpq", f"milvus:{db}"):
        found = json.loads(_run(*query, "--backend", backend, "--rescore", "100"))
        assert found["ranking"] == exact["ranking"]  # every row is rescored: the exact ranking
        note = found["trace"][-1]["notes"]["approximate"]
        assert note.startswith(backend.split(":")[0])


def test_backend_errors_are_one_line(sample_index, tmp_path):
    sample_index.save(tmp_path / "idx")
    for args, message in [
        (["--backend", "ivfpq"], "cir index ann"),
        (["--backend", "annoy"], "unknown search backend"),
        (["--backend", f"milvus:{tmp_path / 'none.db'}"], "has no collection"),
    ]:
        res = CliRunner().invoke(
            cli, ["search", "--index", str(tmp_path / "idx"), "--text", "red", *args]
        )
        assert res.exit_code != 0 and "Traceback" not in res.output
        assert message in res.output
    res = CliRunner().invoke(
        cli, ["index", "ann", str(tmp_path / "idx"), "--max-index-memory", "10B"]
    )
    assert res.exit_code != 0 and "raise --max-index-memory" in res.output
