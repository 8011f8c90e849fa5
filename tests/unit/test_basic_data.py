"""BASIC's published corpora and LAION means ship with cir and read as the reference reads them."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from cir.stages.basic import CORPUS_DIR, load_vector, read_corpus


def test_corpora_read_line_by_line_as_the_reference_reads_csv_rows():
    for name, count in (("generic_subjects", 1842), ("generic_styles", 1000)):
        path = CORPUS_DIR / f"{name}.csv"
        with path.open(newline="") as f:
            reference = [row[0] for row in csv.reader(f)]  # the header row included, as icir does
        assert read_corpus(path) == reference and len(reference) == count
    assert read_corpus(CORPUS_DIR / "generic_subjects.csv")[:2] == ["object_name", "Abacus"]


@pytest.mark.parametrize(
    ("name", "dim"),
    [("laion_1m_mean_clip_vitl14", 768), ("laion_1m_mean_siglip_vitl16_256", 1024),
     ("laion_textual_mean", 768)],
)  # fmt: skip
def test_laion_means_are_plain_float32_arrays(name, dim):
    path = CORPUS_DIR / f"{name}.npy"
    array = np.load(path, allow_pickle=False)
    assert array.dtype == np.float32 and array.size == dim and np.isfinite(array).all()
    vector = load_vector(path)
    assert tuple(vector.shape) == (dim,) and 0.3 < float(vector.norm()) < 1.0


def test_licence_and_provenance_ship_beside_the_data():
    assert "MIT License" in (CORPUS_DIR / "LICENSE.icir").read_text()
    assert "463cc1d4881854f9667977b6dab0e775902ea760" in (CORPUS_DIR / "README.md").read_text()
