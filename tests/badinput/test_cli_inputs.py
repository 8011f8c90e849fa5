"""Command-line inputs that used to surprise: device names, -k beyond the pipeline's k, two
references at once."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cir.cli import cli
from cir.index import GalleryIndex

from .conftest import one_line_error, photos


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, encoder):
    folder = tmp_path_factory.mktemp("cli_inputs")
    GalleryIndex.build(photos(folder / "g", n=60), encoder, out=folder / "i", num_workers=0,
                       progress=False)  # fmt: skip
    return folder


def _search(index_dir, *args: str):
    base = ["search", "--index", str(index_dir / "i"), "--text", "in red", "--no-cache"]
    return CliRunner().invoke(cli, [*base, *args])


DEVICES = {"unknown type": "tpu:9", "cuda without a GPU": "cuda", "cuda index": "cuda:7",
           "meta": "meta", "garbage": "not a device"}  # fmt: skip


@pytest.mark.parametrize("device", DEVICES.values(), ids=DEVICES.keys())
def test_bad_devices_are_one_line_errors(index_dir, device):
    result = _search(index_dir, "--reference-id", "img000.jpg", "--device", device)
    one_line_error(result, "device")


def test_k_beyond_the_pipelines_retrieve_k_returns_k_results(index_dir):
    result = _search(index_dir, "--reference-id", "img000.jpg", "--pipeline", "image_only",
                     "-k", "55", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["ranking"]["ids"]) == 55  # image_only keeps 50


def test_an_image_and_a_reference_id_together_are_refused(index_dir):
    image = str(index_dir / "g" / "img001.png")
    result = _search(index_dir, "--reference-id", "img000.jpg", "--image", image)
    one_line_error(result, "not both")
