"""Property tests (hypothesis): ids round-trip whatever their text, and the file readers answer
any content with a result or a DataError, never another exception."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cir.cache import ContentCache
from cir.errors import CirError, DataError
from cir.index import GalleryIndex
from cir.index.ids import IdTable, printable
from cir.redaction import redact, register_secret

ANY_CHAR = st.characters(exclude_categories=())  # surrogates included, as file names give them
IDS = st.lists(st.text(ANY_CHAR, min_size=1, max_size=12), min_size=1, max_size=30, unique=True)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(IDS)
def test_id_table_round_trips_any_text(ids):
    table = IdTable(ids)
    assert table.tolist() == ids and [table[i] for i in range(len(ids))] == ids
    assert all(table.find(i) == n for n, i in enumerate(ids))
    assert table.take(reversed(range(len(ids)))) == ids[::-1]


@SETTINGS
@given(IDS)
def test_saved_ids_round_trip_any_text(tmp_path_factory, ids):
    folder = tmp_path_factory.mktemp("ids")
    GalleryIndex.from_embeddings(ids, torch.randn(len(ids), 4)).save(folder)
    assert GalleryIndex.load(folder).ids == ids


@SETTINGS
@given(st.binary(min_size=1, max_size=40))
def test_file_names_from_bytes_round_trip_and_print(raw):
    name = os.fsdecode(raw)
    assert IdTable([name])[0] == name
    assert printable(name).encode("utf-8")


@SETTINGS
@given(st.text(ANY_CHAR, max_size=40))
def test_printable_never_fails(text):
    assert printable(text).encode("utf-8") is not None


def _only_data_errors(call):
    with contextlib.suppress(DataError):
        call()


@SETTINGS
@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_the_index_reader_answers_any_manifest(tmp_path_factory, content):
    folder = tmp_path_factory.mktemp("m")
    GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, 4)).save(folder)
    (folder / "manifest.json").write_bytes(content)
    _only_data_errors(lambda: GalleryIndex.load(folder))


@SETTINGS
@given(JSON)
def test_the_index_reader_answers_any_ids_file(tmp_path_factory, value):
    folder = tmp_path_factory.mktemp("ids")
    GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, 4)).save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    ids_file = folder / manifest["files"]["ids"]
    ids_file.write_text(json.dumps(value))
    manifest["sizes"][ids_file.name] = ids_file.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _only_data_errors(lambda: GalleryIndex.load(folder))


@SETTINGS
@given(st.lists(JSON, min_size=1, max_size=3))
def test_the_cache_import_answers_any_lines(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("c")
    header = {"format": "cir-cache", "version": 1, "entries": len(lines)}
    path = folder / "x.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in [header, *lines]))
    cache = ContentCache(folder / "db")
    _only_data_errors(lambda: cache.import_file(path))
    cache.close()


@SETTINGS
@given(JSON)
def test_the_benchmark_readers_answer_any_annotation(tmp_path_factory, value):
    from cir.bench.datasets import get_dataset

    from .test_annotations import FILES, _layout

    for dataset, files in FILES.items():
        root = tmp_path_factory.mktemp(dataset)
        _layout(root, dataset, next(iter(files)), value)
        options = {"categories": ["dress"]} if dataset == "fashioniq" else {}
        with contextlib.suppress(CirError):
            get_dataset(dataset, root, **options).parts("val")


@SETTINGS
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_the_predictions_reader_answers_any_file(tmp_path_factory, content):
    from cir.bench.evaluate import evaluate_files

    from .test_annotations import _layout

    folder = tmp_path_factory.mktemp("p")
    root = _layout(folder / "cirr", "cirr")
    (folder / "p.json").write_bytes(content)
    with contextlib.suppress(CirError):
        evaluate_files("cirr", "val", root, [folder / "p.json"], allow_partial=True)


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=8)


@SETTINGS
@given(TOKEN, st.text(max_size=30), st.text(max_size=30))
def test_a_registered_secret_never_survives_redaction(token, before, after):
    secret = f"hyp-secret-{token}"  # unmistakable, so other tests' texts are never masked
    register_secret(secret)
    assert secret not in redact(before + secret + after)


def test_paths_are_plain_names_only(tmp_path: Path):
    from cir.index.validate import plain_name

    assert plain_name("ids.1.json") and not plain_name("../x") and not plain_name("a/b")


def test_configuration_names_ending_in_key_are_not_taken_for_secrets():
    from cir.redaction import looks_secret, redact

    assert not looks_secret("restrict_key") and not looks_secret("reasoning_key")
    assert looks_secret("api_key") and looks_secret("private-key") and looks_secret("key")
    text = redact("restrict_key: candidates, api_key=abcdef123")
    assert "candidates" in text and "abcdef123" not in text
