"""Malformed benchmark annotation and prediction files: a one-line DataError naming the file
and the entry, never a traceback or a silently wrong query.

Each case starts from a tiny valid layout of the official format, written here, and breaks one
thing. Add a case: (dataset, file, how to break its JSON text or value, words expected).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.datasets import get_dataset
from cir.cli import cli
from cir.errors import DataError

from .conftest import one_line_error

CIRR_QUERY = {"pairid": 1, "reference": "dev-1-0-img0", "target_hard": "dev-1-0-img1",
              "target_soft": {"dev-1-0-img1": 1.0}, "caption": "is red",
              "img_set": {"id": 1, "members": ["dev-1-0-img0", "dev-1-0-img1"]}}  # fmt: skip
CIRCO_QUERY = {"id": 0, "reference_img_id": 8, "target_img_id": 9, "gt_img_ids": [9],
               "relative_caption": "is red", "shared_concept": "a car"}  # fmt: skip
CIRCO_INFO = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
FIQ_QUERY = {"candidate": "B1", "target": "B2", "captions": ["is red", "is longer"]}

FILES = {
    "cirr": {
        "captions/cap.rc2.val.json": [CIRR_QUERY],
        "image_splits/split.rc2.val.json": {"dev-1-0-img0": "./dev/a.png", "dev-1-0-img1": "./b"},
    },
    "circo": {
        "annotations/val.json": [CIRCO_QUERY],
        "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json": {
            "images": [{"id": 8, "file_name": "8.jpg"}, {"id": 9, "file_name": "9.jpg"}]
        },
    },
    "fashioniq": {
        "captions/cap.dress.val.json": [FIQ_QUERY],
        "image_splits/split.dress.val.json": ["B1", "B2"],
    },
}


def _layout(root: Path, dataset: str, file: str | None = None, content=None) -> Path:
    for name, value in FILES[dataset].items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        value = content if name == file else value
        path.write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())
    return root


def _entry(base: dict, **changes) -> list[dict]:
    entry = {**base, **changes}
    return [{k: v for k, v in entry.items() if v is not ...}]


CASES = {
    "cirr not UTF-8": ("cirr", "captions/cap.rc2.val.json", b'[{"caption": "\xff"}]', "JSON"),
    "cirr deep JSON": ("cirr", "captions/cap.rc2.val.json", b"[" * 60000, "nested too deeply"),
    "cirr an object": ("cirr", "captions/cap.rc2.val.json", {"a": 1}, "a list of entries"),
    "cirr missing caption": ("cirr", "captions/cap.rc2.val.json",
                             _entry(CIRR_QUERY, caption=...), "'caption' is missing"),
    "cirr null caption": ("cirr", "captions/cap.rc2.val.json",
                          _entry(CIRR_QUERY, caption=None), "'caption' is NoneType"),
    "cirr caption a number": ("cirr", "captions/cap.rc2.val.json",
                              _entry(CIRR_QUERY, caption=5), "expected text"),
    "cirr img_set a list": ("cirr", "captions/cap.rc2.val.json",
                            _entry(CIRR_QUERY, img_set=[1]), "'img_set'"),
    "cirr no members": ("cirr", "captions/cap.rc2.val.json",
                        _entry(CIRR_QUERY, img_set={"id": 1}), "'members'"),
    "cirr entry a string": ("cirr", "captions/cap.rc2.val.json", ["x"], "not an object"),
    "cirr split a list": ("cirr", "image_splits/split.rc2.val.json", ["a"], "object of names"),
    "cirr split numbers": ("cirr", "image_splits/split.rc2.val.json", {"a": 1}, "object of names"),
    "circo missing fields": ("circo", "annotations/val.json", [{"id": 1}], "'reference_img_id'"),
    "circo shared concept null": ("circo", "annotations/val.json",
                                  _entry(CIRCO_QUERY, shared_concept=None), "'shared_concept'"),
    "circo gt not a list": ("circo", "annotations/val.json",
                            _entry(CIRCO_QUERY, gt_img_ids=9), "'gt_img_ids'"),
    "circo images without names": (
        "circo", CIRCO_INFO,
        {"images": [{"id": 8}]}, "'file_name'",
    ),
    "circo no images list": ("circo", CIRCO_INFO,
                             {"imgs": []}, "no 'images' list"),
    "fashioniq captions a string": ("fashioniq", "captions/cap.dress.val.json",
                                    _entry(FIQ_QUERY, captions="is red"), "'captions'"),
    "fashioniq captions empty": ("fashioniq", "captions/cap.dress.val.json",
                                 _entry(FIQ_QUERY, captions=[]), "non-empty list"),
    "fashioniq caption a number": ("fashioniq", "captions/cap.dress.val.json",
                                   _entry(FIQ_QUERY, captions=["a", 3]), "non-empty list of text"),
    "fashioniq no candidate": ("fashioniq", "captions/cap.dress.val.json",
                               _entry(FIQ_QUERY, candidate=...), "'candidate' is missing"),
    "fashioniq target a list": ("fashioniq", "captions/cap.dress.val.json",
                                _entry(FIQ_QUERY, target=["B2"]), "'target'"),
    "fashioniq split an object": ("fashioniq", "image_splits/split.dress.val.json", {"B1": 1},
                                  "list of image names"),
}  # fmt: skip


@pytest.mark.parametrize(("dataset", "file", "content", "message"), CASES.values(), ids=CASES)
def test_a_malformed_annotation_file_is_a_clear_error(tmp_path, dataset, file, content, message):
    root = _layout(tmp_path, dataset, file, content)
    options = {"categories": ["dress"]} if dataset == "fashioniq" else {}
    with pytest.raises(DataError) as err:
        get_dataset(dataset, root, **options).parts("val")
    assert message in str(err.value) and file.split("/")[-1] in str(err.value)
    args = ["data", "check", dataset, "--data-root", str(root), "--split", "val"]
    one_line_error(CliRunner().invoke(cli, args))


@pytest.mark.parametrize("dataset", ["cirr", "circo", "fashioniq"])
def test_the_valid_layouts_read(tmp_path, dataset):
    options = {"categories": ["dress"]} if dataset == "fashioniq" else {}
    queries = get_dataset(dataset, _layout(tmp_path, dataset), **options).queries("val")
    assert len(queries) == 1 and queries[0].text


PREDICTIONS = {
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'{"1": ["\xff"]}',
    "empty": b"",
}


@pytest.mark.parametrize("data", PREDICTIONS.values(), ids=PREDICTIONS.keys())
def test_a_malformed_predictions_file_is_a_clear_error(tmp_path, data):
    root = _layout(tmp_path / "cirr", "cirr")
    (tmp_path / "p.json").write_bytes(data)
    args = ["bench", "evaluate", "cirr", "--data-root", str(root),
            "--predictions", str(tmp_path / "p.json")]  # fmt: skip
    one_line_error(CliRunner().invoke(cli, args))


def test_allow_partial_with_no_query_ranked_is_a_clear_error(tmp_path):
    root = _layout(tmp_path / "cirr", "cirr")
    (tmp_path / "p.json").write_text(json.dumps({"version": "rc2", "metric": "recall"}))
    args = ["bench", "evaluate", "cirr", "--data-root", str(root), "--allow-partial",
            "--predictions", str(tmp_path / "p.json")]  # fmt: skip
    one_line_error(CliRunner().invoke(cli, args), "nothing to score")
