"""clip-retrieval's img_emb/metadata layout becomes a cir index; hostile files give clear errors."""

import numpy as np
import pytest
import torch

from cir.errors import DataError
from cir.index import GalleryIndex
from cir.index.clip_retrieval import import_clip_retrieval

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MODEL = "ViT-B-32/openai"


def _unit(n, d, seed, dtype=np.float16):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _part(folder, number, emb, columns):
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{number}.npy", emb)
    pq.write_table(pa.table(columns), folder / "metadata" / f"metadata_{number}.parquet")


def _names(start, n):
    return [f"shard/{i:05d}.jpg" for i in range(start, start + n)]


@pytest.fixture()
def laion(tmp_path):
    folder = tmp_path / "clip_out"
    parts = [_unit(7, 512, 0), _unit(5, 512, 1)]
    for number, (start, emb) in enumerate(zip((0, 7), parts, strict=True)):
        names = _names(start, len(emb))
        _part(folder, number, emb, {"image_path": names, "url": [f"http://x/{n}" for n in names]})
    return folder, np.concatenate(parts)


def test_import_equals_the_arrays(laion, tmp_path):
    folder, rows = laion
    index = import_clip_retrieval(folder, tmp_path / "idx", model=MODEL)
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert loaded.ids == _names(0, 12) and index.encoder_key == "open_clip:ViT-B-32:openai"
    assert torch.equal(loaded.embeddings, torch.from_numpy(rows))
    assert loaded.path("shard/00003.jpg").name == "00003.jpg"
    assert loaded.search(torch.from_numpy(rows[4]).float(), k=1)[0].ids == ("shard/00004.jpg",)


def test_url_only_metadata_gives_url_ids(tmp_path):
    folder = tmp_path / "urls"
    _part(
        folder, 0, _unit(3, 16, 2, np.float32), {"url": ["http://a/1", "http://a/2", "http://a/3"]}
    )
    index = import_clip_retrieval(folder, tmp_path / "idx", model=MODEL)
    assert (
        index.ids == ["http://a/1", "http://a/2", "http://a/3"] and index.path("http://a/1") is None
    )


def _bad_rows():
    nan = _unit(3, 16, 3, np.float32)
    nan[1, 4] = np.nan
    return nan


@pytest.mark.parametrize(
    "emb,columns,message",
    [
        (_bad_rows(), {"image_path": ["a", "b", "c"]}, "row 1 is not a usable embedding"),
        (np.zeros((3, 16), np.float32), {"image_path": ["a", "b", "c"]}, "row 0 is not a usable"),
        (_unit(3, 16, 4)[None], {"image_path": ["a", "b", "c"]}, "has shape (1, 3, 16)"),
        (np.ones((3, 16), np.int64), {"image_path": ["a", "b", "c"]}, "holds int64 values"),
        (
            np.array([{"a": 1}] * 3, dtype=object),
            {"image_path": ["a", "b", "c"]},
            "pickles are refused",
        ),
        (_unit(3, 16, 5), {"image_path": ["a", "b"]}, "has 2 rows but its img_emb file has 3"),
        (_unit(3, 16, 5), {"caption": ["a", "b", "c"]}, "neither an image_path nor a url"),
        (_unit(3, 16, 5), {"image_path": ["a", None, "c"]}, "row 1 is None, not a string"),
        (_unit(3, 16, 5), {"image_path": ["a", "b", "a"]}, "duplicate id"),
    ],
)
def test_hostile_files_give_clear_errors_and_write_nothing(tmp_path, emb, columns, message):
    folder = tmp_path / "bad"
    _part(folder, 0, emb, columns)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_clip_retrieval(folder, tmp_path / "idx", model=MODEL)
    assert not (tmp_path / "idx").exists()


def test_broken_layouts_are_named(laion, tmp_path):
    folder, _ = laion
    with pytest.raises(DataError, match="needs img_emb/ and metadata/"):
        import_clip_retrieval(tmp_path, tmp_path / "idx", model=MODEL)
    _part(folder, 2, _unit(2, 256, 6), {"image_path": ["x", "y"]})
    with pytest.raises(DataError, match=r"different dimensions \[256, 512\]"):
        import_clip_retrieval(folder, tmp_path / "idx", model=MODEL)
    (folder / "metadata" / "metadata_2.parquet").unlink()
    with pytest.raises(DataError, match=r"metadata_2\.parquet is missing"):
        import_clip_retrieval(folder, tmp_path / "idx", model=MODEL)
    np.save(folder / "img_emb" / "img_emb_2.npy", _unit(2, 512, 6))
    (folder / "metadata" / "metadata_2.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet table"):
        import_clip_retrieval(folder, tmp_path / "idx", model=MODEL)
