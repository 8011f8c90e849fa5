"""Readers of the authors' published intermediate outputs, on small files in each format."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from cir.bench.datasets import get_dataset
from cir.errors import DataError
from cir.replay import (
    UnsafePickleError,
    caption_rows,
    load_plain_pickle,
    read_cirevl_captions,
    read_cirevl_mods,
    read_gallery_captions,
    read_ldre,
    read_osrcir,
)

CIRCO = [
    {"reference_img_id": 281438, "relative_caption": "is taken during the daytime",
     "shared_concept": "a man on a toilet", "id": 0},
    {"reference_img_id": 251485, "relative_caption": "is in a room with wooden walls",
     "shared_concept": "a double bed", "id": 1},
]  # fmt: skip
CIRR = [
    {"pairid": 12063, "reference": "test1-147-1-img1", "caption": "add a woman hugging it",
     "img_set": {"id": 1, "members": ["test1-147-1-img1", "test1-83-1-img1"]}},
]  # fmt: skip
FASHIONIQ = [
    {"target": "B0084Y8XIU", "candidate": "B005X4PL1G", "captions": ["is shiny.", "fit and flare"]},
    {"target": "B00AKLK08G", "candidate": "B008XODTD0", "captions": ["is grey", "is short"]},
]  # fmt: skip


def _write(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def _with_lists(records: list[dict], n: int = 3, edits: str = "multi_gpt-3.5_opt") -> list[dict]:
    return [
        {**r, "multi_caption_opt": [f"caption {i}.{j}" for j in range(n)],
         edits: [f"edit {i}.{j}" for j in range(n)]}
        for i, r in enumerate(records)
    ]  # fmt: skip


# ---------------------------------------------------------------------------- LDRE / SEIZE
def test_ldre_records_use_the_ids_of_cirs_benchmark_readers(tmp_path):
    roots = {name: tmp_path / name for name in ("circo", "cirr", "fashioniq")}
    _write(roots["circo"] / "annotations" / "test.json", CIRCO)
    _write(roots["cirr"] / "captions" / "cap.rc2.test1.json", CIRR)
    _write(roots["fashioniq"] / "captions" / "cap.dress.val.json", FASHIONIQ)
    files = {
        "circo": _write(tmp_path / "ldre_circo.json", _with_lists(CIRCO)),
        "cirr": _write(tmp_path / "ldre_cirr.json", _with_lists(CIRR)),
        "fashioniq": _write(tmp_path / "seize_dress.json", _with_lists(FASHIONIQ)),
    }
    for name, split in (("circo", "test"), ("cirr", "test"), ("fashioniq", "val")):
        options = {"categories": ["dress"]} if name == "fashioniq" else {}
        queries = get_dataset(name, roots[name], **options).queries(split)
        records = read_ldre(files[name], category="dress" if name == "fashioniq" else None)
        assert list(records) == [q.id for q in queries]
        for query, record in zip(queries, records.values(), strict=True):
            assert (record.reference_id, record.modification) == (query.reference_id, query.text)
            assert len(record.captions) == len(record.targets) == 3
    first = read_ldre(files["circo"])["0"]
    assert first.captions[1] == "caption 0.1" and first.targets[1] == "edit 0.1"
    assert first.source == "ldre:multi_caption_opt+multi_gpt-3.5_opt"


def test_ldre_captions_only_and_chosen_edit_list(tmp_path):
    raw = [{**r, "multi_caption_opt": ["a", "b"]} for r in CIRCO]
    assert read_ldre(_write(tmp_path / "raw.json", raw))["1"].targets == ()
    both = [{**r, "multi_gpt-4o_opt": ["x", "y", "z"]} for r in _with_lists(CIRCO)]
    path = _write(tmp_path / "both.json", both)
    with pytest.raises(DataError, match=r"several edit lists.*edits_key"):
        read_ldre(path)
    assert read_ldre(path, edits_key="multi_gpt-4o_opt")["0"].targets == ("x", "y", "z")


@pytest.mark.parametrize(
    ("records", "message"),
    [({"not": "a list"}, "expected a JSON list"),
     ([{**CIRCO[0], "multi_caption_opt": ["a"], "multi_gpt-3.5_opt": ["x", "y"]}],
      "1 captions but 2 edits"),
     ([{**CIRCO[0], "multi_caption_opt": "a caption"}], "expected a list of strings"),
     ([{**CIRCO[0]}], "no 'multi_caption_opt' list"),
     (_with_lists([CIRCO[0], CIRCO[0]]), "query id '0' appears twice"),
     (_with_lists([{"foo": 1}]), "not an annotation record"),
     (_with_lists(FASHIONIQ), "give the category")],
)  # fmt: skip
def test_ldre_bad_files_are_refused(tmp_path, records, message):
    with pytest.raises(DataError, match=message):
        read_ldre(_write(tmp_path / "bad.json", records))


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_ldre(tmp_path / "missing.json")
    bad = tmp_path / "broken.json"
    bad.write_text("[{")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        read_ldre(bad)


# ---------------------------------------------------------------------------- CIReVL
def test_cirevl_mods_are_aligned_with_the_query_ids(tmp_path):
    mods = {"base_caption": ["a dog", "a bed"], "instruction": ["make it a cat", "add walls"],
            "modified_captions": ["a cat", "a bed in a wooden room"]}  # fmt: skip
    path = _write(tmp_path / "circo_blip2_t5_test_mods_structural_modifier_prompt.json", mods)
    records = read_cirevl_mods(path, ["0", "1"])
    assert records["1"].captions == ("a bed",)
    assert records["1"].targets == ("a bed in a wooden room",)
    assert records["0"].modification == "make it a cat"
    with pytest.raises(DataError, match="2 entries for 3 query ids"):
        read_cirevl_mods(path, ["0", "1", "2"])
    with pytest.raises(DataError, match="expected a JSON object with the lists"):
        read_cirevl_mods(_write(tmp_path / "x.json", {"base_caption": []}), [])


def test_cirevl_captions_pickle_with_and_without_its_own_ids(tmp_path):
    data = {"all_captions": ["a dog", "a bed"], "gt_img_ids": [["1", ""], ["2", "3"]],
            "relative_captions": ["make it a cat", "add walls"], "target_names": [],
            "reference_names": ["281438", "251485"], "query_ids": ["0", "1"]}  # fmt: skip
    circo = tmp_path / "circo_captions.pkl"
    circo.write_bytes(pickle.dumps(data, protocol=4))
    record = read_cirevl_captions(circo)["1"]
    assert (record.reference_id, record.modification, record.captions) == (
        "251485", "add walls", ("a bed",))  # fmt: skip
    fiq = tmp_path / "fashioniq_captions.pkl"
    fiq.write_bytes(pickle.dumps({**data, "query_ids": []}, protocol=2))
    with pytest.raises(DataError, match="give query_ids"):
        read_cirevl_captions(fiq)
    assert list(read_cirevl_captions(fiq, ["dress/0", "dress/1"])) == ["dress/0", "dress/1"]


def _tensor_in_list_pickle() -> bytes:
    """A dict whose list holds a torch tensor, like CIReVL's CIRR captions pickle."""
    name = b"query_ids"
    return (
        b"\x80\x02}X" + len(name).to_bytes(4, "little") + name
        + b"]ctorch._utils\n_rebuild_tensor_v2\n)Ras."
    )  # fmt: skip


def test_cirevl_cirr_pickle_with_tensors_is_refused(tmp_path):
    path = tmp_path / "cirr_captions.pkl"
    path.write_bytes(_tensor_in_list_pickle())
    with pytest.raises(UnsafePickleError, match=r"global torch\._utils\._rebuild_tensor_v2"):
        read_cirevl_captions(path)


# ---------------------------------------------------------------------------- restricted pickle
class _Shell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Persistent(pickle.Pickler):
    def persistent_id(self, obj):
        return "storage-0" if obj == "tensor-data" else None


def test_plain_pickles_load_in_every_protocol(tmp_path):
    value = {"a": [1, 2.5, None, True], "b": ("x", "é"), "c": {"nested": {"s"}}}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        assert load_plain_pickle(path) == value
    path.write_bytes(pickle.dumps([b"raw", frozenset({1})], protocol=3))
    assert load_plain_pickle(path) == [b"raw", frozenset({1})]


def test_malicious_pickle_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"all_captions": [_Shell(f"touch {marker}")]}))
    with pytest.raises(UnsafePickleError, match=r"the global (posix|os|nt)\.system"):
        load_plain_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(eval, protocol=0))
    with pytest.raises(UnsafePickleError, match=r"(builtins|__builtin__)\.eval"):
        load_plain_pickle(path)


def test_persistent_ids_truncated_and_oversized_pickles_are_refused(tmp_path):
    path = tmp_path / "torch_like.pkl"
    with path.open("wb") as f:
        _Persistent(f, protocol=2).dump(["tensor-data"])
    with pytest.raises(UnsafePickleError, match="persistent reference"):
        load_plain_pickle(path)
    path.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(DataError, match="not a readable pickle"):
        load_plain_pickle(path)
    path.write_bytes(pickle.dumps(list(range(100))))
    with pytest.raises(DataError, match="the limit is 10"):
        load_plain_pickle(path, max_bytes=10)
    with pytest.raises(DataError, match="does not exist"):
        load_plain_pickle(tmp_path / "none.pkl")


# ---------------------------------------------------------------------------- OSrCIR-style answers
def test_osrcir_answers_with_failures_and_fashioniq_ids(tmp_path):
    answers = [
        {**CIRR[0], "Original Image Description": "three dogs", "Thoughts": "keep one dog",
         "Reflections": "", "Target Image Description": "a woman hugging one dog"},
        {**CIRR[0], "pairid": 12064, "Target Image Description": "PARSE_FAILED"},
    ]  # fmt: skip
    records = read_osrcir(_write(tmp_path / "cirr.json", answers))
    assert records["12063"].targets == ("a woman hugging one dog",)
    assert records["12063"].captions == ("three dogs",)
    assert records["12063"].reasoning == ("keep one dog",)
    assert records["12064"].targets == () and records["12064"].reference_id == "test1-147-1-img1"
    fiq = [{**r, "Target Image Description": "a dress"} for r in FASHIONIQ]
    fiq_records = read_osrcir(_write(tmp_path / "fiq.json", fiq), category="toptee")
    assert list(fiq_records) == ["toptee/0", "toptee/1"]
    assert fiq_records["toptee/0"].modification == "is shiny and fit and flare"
    with pytest.raises(DataError, match="no 'Target Image Description' field"):
        read_osrcir(_write(tmp_path / "none.json", CIRR))
    with pytest.raises(DataError, match="expected a string"):
        read_osrcir(_write(tmp_path / "num.json", [{**CIRR[0], "Target Image Description": 3}]))


# ---------------------------------------------------------------------------- WeiMoCIR
def test_weimocir_gallery_captions_first_three_and_missing_images(tmp_path):
    entries = [
        {"candidate": "dev-1-0-img0", "captions": ["c1", "c2", "c3"]},
        {"candidate": "dev-2-0-img0", "captions": [f"p{i}" for i in range(9)]},
        {"candidate": "dev-3-0-img0", "captions": ["only one"]},
    ]
    records = read_gallery_captions(_write(tmp_path / "cirr_labeled.json", entries))
    assert records["dev-2-0-img0"].captions == tuple(f"p{i}" for i in range(9))
    rows, missing = caption_rows(records, ["dev-2-0-img0", "dev-9-0-img0", "dev-1-0-img0"])
    assert rows == [["p0", "p1", "p2"], ["", "", ""], ["c1", "c2", "c3"]]
    assert missing == ["dev-9-0-img0"]
    with pytest.raises(DataError, match="has 1 captions; need 3"):
        caption_rows(records, ["dev-3-0-img0"])
    assert caption_rows(records, ["dev-3-0-img0"], k=1)[0] == [["only one"]]
    with pytest.raises(DataError, match="entry 0"):
        read_gallery_captions(_write(tmp_path / "bad.json", [{"candidate": "x"}]))
