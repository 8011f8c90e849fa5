"""Published numbers in pipeline files, dataset settings in presets, docs/reproduce.md and
``cir bench reproduce``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.datasets.fashioniq import FashionIQ
from cir.bench.reproduce import find_row, reproduce_table
from cir.cli import cli
from cir.errors import ConfigError
from cir.pipeline import Pipeline, load_pipeline
from cir.published import read_published
from cir.stages.basic import CORPUS_DIR, shipped_file

REPO = Path(__file__).resolve().parents[2]
ROW = {"dataset": "circo", "backbone": "ViT-L-14", "source": "Table 1", "metrics": {"mAP@5": 1.0}}


def test_a_published_row_reads_with_the_benchmarks_default_split():
    (row,) = read_published([ROW])
    assert (row.split, row.metrics) == ("test", {"mAP@5": 1.0})
    (fiq,) = read_published([ROW | {"dataset": "fashioniq", "metrics": {"dress/Recall@10": 2}}])
    assert fiq.split == "val"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": {"R@1": 1}}, "not a circo metric"),
        ({"metrics": {"Recall_subset@1": 1}}, "not a circo metric"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
        ({"metrics": {"mAP@5": "high"}}, "must be a number"),
        ({"split": "train"}, "split must be val or test"),
        ({"source": None, "extra": 1}, "must have dataset, backbone, source and metrics"),
    ],
)
def test_bad_published_rows_are_refused_with_what_is_valid(change, message):
    with pytest.raises(ConfigError, match=message):
        read_published([ROW | change])


def test_a_dataset_preset_sets_the_query_text_rule():
    spec = {
        "name": "p",
        "stages": [{"stage": "encode_text"}, {"stage": "retrieve", "params": {"query": "text"}}],
        "presets": {"fashioniq": {"dataset.text_rule": "concat"}},
    }  # fmt: skip
    assert Pipeline.from_dict(spec).dataset == {}
    assert Pipeline.from_dict(spec, preset="fashioniq").dataset == {"text_rule": "concat"}
    with pytest.raises(ConfigError, match=r"dataset\.<text_rule>"):
        Pipeline.from_dict(spec, overrides={"dataset.colour": "red"})


def test_fashioniq_concat_joins_the_captions_as_written(fixtures_root):
    ds = FashionIQ(fixtures_root / "fashioniq", text_rule="concat")
    query = ds.queries("val")[0]
    assert query.text == "".join(query.extras["captions"])


def test_every_method_pipeline_declares_its_papers_numbers():
    for name in ("ldre", "ldre_pdv", "seize", "weimocir", "basic"):
        pipe = load_pipeline(name)
        assert pipe.published and pipe.deviations, name


def test_published_presets_carry_the_papers_settings():
    seize = load_pipeline("seize", preset=["cirr", "cirr@ViT-bigG-14"]).stage("retrieve").params
    assert (seize.rule_params["lambda_neg"], seize.rule_params["lambda_pos"]) == (1.0, 0.22)
    for dataset in ("circo", "fashioniq"):
        rule = load_pipeline("seize", preset=dataset).stage("retrieve").params.rule_params
        assert rule["reference_score"] == -1
    ldre = {d: load_pipeline("ldre", preset=d) for d in ("circo", "cirr")}
    assert ldre["circo"].stage("ensemble").params.mode == "ldre"
    assert ldre["circo"].stage("ensemble").whole_set
    assert ldre["cirr"].stage("ensemble").params.mode == "mean"
    assert not ldre["cirr"].stage("encode_targets").params.normalize  # mean of raw features
    pdv = load_pipeline("ldre_pdv", preset="circo").stage("pdv").params
    assert (pdv.beta, pdv.alpha_image, pdv.alpha_text) == (0.75, 1.4, 1.4)
    fiq = load_pipeline("cirevl_pdv", preset=["fashioniq", "fashioniq@ViT-B-32"]).stage("pdv")
    assert (fiq.params.beta, fiq.params.alpha_image, fiq.params.alpha_text) == (0.75, 1.4, 1.4)


def test_docs_reproduce_is_the_generated_table():
    committed = (REPO / "docs" / "reproduce.md").read_text(encoding="utf-8")
    assert committed == reproduce_table(), (
        "docs/reproduce.md is stale: regenerate it with "
        "python -m cir.cli pipelines reproduce-table > docs/reproduce.md"
    )


def test_reproduce_finds_the_row_and_its_encoder():
    row = find_row("ldre", "cirr", "ViT-B-32")
    assert row.command("/d")[3:] == [
        "cirr", "--split", "test", "--data-root", "/d", "--pipeline", "ldre",
        "--encoder", "ViT-B-32/openai",
    ]  # fmt: skip
    assert find_row("ldre", "cirr").encoder is None  # the pipeline's own backbone
    with pytest.raises(ConfigError, match="no published row for cirr ViT-X"):
        find_row("ldre", "cirr", "ViT-X")


def test_bench_reproduce_dry_run_prints_the_command():
    result = CliRunner().invoke(
        cli, ["bench", "reproduce", "seize", "cirr", "--backbone", "ViT-bigG-14",
              "--data-root", "/data/cirr", "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "cir bench run cirr --split test --data-root /data/cirr --pipeline seize"
    )


def test_pipelines_show_lists_the_published_numbers():
    result = CliRunner().invoke(cli, ["pipelines", "show", "seize"])
    assert result.exit_code == 0 and "# published numbers (9):" in result.output
    assert "cirr test ViT-bigG-14" in result.output


def test_basic_files_resolve_by_name_and_paths_stay_paths(tmp_path):
    assert shipped_file("generic_subjects.csv") == CORPUS_DIR / "generic_subjects.csv"
    own = tmp_path / "generic_subjects.csv"
    own.write_text("a\nb\n")
    assert shipped_file(own) == own
    assert shipped_file("missing.csv") == Path("missing.csv")
