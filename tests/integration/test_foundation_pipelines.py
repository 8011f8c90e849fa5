"""The foundation pipelines end to end on real photos with a tiny CLIP, from Python and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cir import ConfigError, DataError, EncoderMismatchError, Query, load_pipeline
from cir.cli import cli
from cir.models import load_encoder
from cir.sample_gallery import SAMPLE_QUERIES
from tests.conftest import REPO

FOUNDATION = ("image_only", "text_only", "clip_fusion")


def _queries(sample_photos):
    return [Query(text, reference=sample_photos / name, id=name) for name, text in SAMPLE_QUERIES]


@pytest.mark.parametrize("name", FOUNDATION)
def test_pipeline_ranks_the_whole_gallery_without_duplicates(name, sample_index, sample_photos):
    states = load_pipeline(name).run(_queries(sample_photos), sample_index, batch_size=4)
    assert len(states) == len(SAMPLE_QUERIES)
    for state in states:
        ids = state.ranking.ids
        assert len(ids) == len(sample_index) and len(set(ids)) == len(ids)
        assert list(state.ranking.scores) == sorted(state.ranking.scores, reverse=True)
        assert [r.name for r in state.trace] == [s.instance for s in load_pipeline(name).stages]


def test_image_only_finds_the_reference_itself_first(sample_index, sample_photos):
    states = load_pipeline("image_only").run(_queries(sample_photos), sample_index)
    for state in states:
        assert state.ranking.ids[0] == state.query.id
        assert state.ranking.scores[0] == pytest.approx(1.0, abs=2e-3)


def test_clip_fusion_computes_the_weighted_normalised_sum(sample_index, sample_photos, tiny_clip):
    encoder = load_encoder(tiny_clip)
    name, text = SAMPLE_QUERIES[0]
    pipe = load_pipeline("clip_fusion", overrides=["stages.fuse.alpha=0.3"])
    state = pipe.run([Query(text, reference=sample_photos / name)], sample_index)[0]
    image = encoder.encode_images([_open(sample_photos / name)])[0]
    expected = F.normalize(0.7 * image + 0.3 * encoder.encode_texts([text])[0], dim=-1)
    assert torch.allclose(state.embeddings["query"], expected, atol=1e-5)
    scores = sample_index.embeddings.float() @ expected
    best = sample_index.ids[int(scores.argmax())]
    assert state.ranking.ids[0] == best
    assert state.trace[2].notes["weights"] == {"image": pytest.approx(0.7), "text": 0.3}


def test_raw_feature_fusion_matches_the_weimocir_reference_code(
    sample_index, sample_photos, tiny_clip
):
    """WeiMoCIR's reference code mixes un-normalised features: normalize=false gives that form."""
    encoder = load_encoder(tiny_clip)
    name, text = SAMPLE_QUERIES[0]
    raw = ["stages.encode_image.normalize=false", "stages.encode_text.normalize=false"]
    state = load_pipeline("clip_fusion", overrides=raw).run(
        [Query(text, reference_id=name)], sample_index
    )[0]
    image = encoder.encode_images([_open(sample_photos / name)], normalize=False)[0]
    words = encoder.encode_texts([text], normalize=False)[0]
    assert abs(float(image.norm()) - 1) > 1e-3  # really raw, not the stored unit vector
    assert torch.allclose(state.embeddings["text"], words, atol=1e-5)
    expected = F.normalize(0.2 * image + 0.8 * words, dim=-1)
    assert torch.allclose(state.embeddings["query"], expected, atol=1e-5)


def test_reference_by_gallery_id_reuses_the_stored_embedding(sample_index, sample_photos):
    name, text = SAMPLE_QUERIES[1]
    pipe = load_pipeline("clip_fusion", preset="cirr")
    by_id = pipe.run([Query(text, reference_id=name)], sample_index)[0]
    by_path = pipe.run([Query(text, reference=sample_photos / name)], sample_index)[0]
    assert by_id.trace[0].notes == {"reused_index_embedding": True}
    assert (by_id.trace[0].cache_hits, by_id.trace[0].cache_misses) == (1, 0)
    assert "reused_index_embedding" not in by_path.trace[0].notes
    assert name not in by_id.ranking.ids  # the cirr preset excludes the reference
    assert torch.allclose(by_id.embeddings["image"], by_path.embeddings["image"], atol=2e-3)


def test_second_run_takes_every_embedding_from_the_cache(sample_index, sample_photos, tmp_path):
    from cir.cache import ContentCache

    cache = ContentCache(tmp_path / "cache")
    pipe = load_pipeline("clip_fusion")
    first = pipe.run(_queries(sample_photos), sample_index, cache=cache)
    again = pipe.run(_queries(sample_photos), sample_index, cache=cache)
    for before, after in zip(first, again, strict=True):
        assert [r.cache_misses for r in before.trace[:2]] == [1, 1]
        assert [(r.cache_hits, r.cache_misses) for r in after.trace[:2]] == [(1, 0), (1, 0)]
        assert after.ranking == before.ranking


def test_restrict_ranks_only_the_listed_ids(sample_index, sample_photos):
    members = sample_index.ids[:3]
    pipe = load_pipeline("clip_fusion", overrides=["stages.retrieve.restrict_key=members"])
    query = Query("in black and white", reference_id=members[0], extras={"members": members})
    state = pipe.run([query], sample_index)[0]
    assert sorted(state.ranking.ids) == sorted(members)


def test_user_errors_are_clear(sample_index, tiny_clip, tmp_path):
    with pytest.raises(DataError, match="has no reference image"):
        load_pipeline("clip_fusion").run([Query("red")], sample_index)
    with pytest.raises(DataError, match="no such entry"):
        pipe = load_pipeline("text_only", overrides=["stages.retrieve.restrict_key=members"])
        pipe.run([Query("red")], sample_index)
    with pytest.raises(ConfigError, match="needs a gallery index"):
        load_pipeline("text_only", overrides=[f"stages.encode_text.model={tiny_clip}"]).run(
            [Query("red")]
        )


def test_other_encoder_is_refused_unless_allowed(sample_index, tmp_path):
    from cir.testing.clip import tiny_open_clip

    other = tiny_open_clip(tmp_path / "other", seed=1)
    pipe = load_pipeline("text_only", overrides=[f"stages.encode_text.model={other}"])
    with pytest.raises(EncoderMismatchError):
        pipe.run([Query("red")], sample_index)
    allowed = load_pipeline(
        "text_only",
        overrides=[
            f"stages.encode_text.model={other}",
            "stages.retrieve.allow_encoder_mismatch=true",
        ],
    )
    assert allowed.run([Query("red")], sample_index)[0].ranking is not None


@pytest.fixture(scope="module")
def saved_index(sample_index, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved_index")
    sample_index.save(out)
    return out


@pytest.mark.parametrize("name", FOUNDATION)
def test_cli_search_prints_a_table_and_json(name, saved_index, sample_photos):
    photo, text = SAMPLE_QUERIES[2]
    args = ["search", "--index", str(saved_index), "--image", str(sample_photos / photo)]
    args += ["--text", text, "--pipeline", name, "-k", "4"]
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0, table.output
    lines = table.output.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "path"] and len(lines) == 2 + 4
    as_json = CliRunner().invoke(cli, [*args, "--json"])
    payload = json.loads(as_json.output)
    assert len(payload["ranking"]["ids"]) == 4
    assert [r["stage"] for r in payload["trace"]][-1] == "retrieve"


def test_cli_user_errors_exit_non_zero_without_traceback(saved_index, sample_photos, tmp_path):
    photo = str(sample_photos / SAMPLE_QUERIES[0][0])
    index, image = ["--index", str(saved_index)], ["--image", photo, "--text", "x"]
    cases = [
        (["search", *index, "--image", "missing.jpg", "--text", "x"], "does not exist"),
        (["search", *index, *image, "--pipeline", "nope"], "unknown pipeline"),
        (["search", "--index", str(tmp_path), *image], "index"),
        (["pipelines", "show", "nope"], "unknown pipeline"),
        (["search", *index, *image, "--set", "stages.fuse.alpah=1"], "valid parameters"),
    ]
    for args, message in cases:
        result = subprocess.run(
            [sys.executable, "-m", "cir.cli", *args], capture_output=True, text=True, cwd=REPO
        )
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr


def test_cli_pipelines_list_and_show():
    listed = CliRunner().invoke(cli, ["pipelines", "list"])
    assert listed.exit_code == 0
    for name in FOUNDATION:
        assert name in listed.output
    shown = CliRunner().invoke(cli, ["pipelines", "show", "clip_fusion"])
    assert shown.output.startswith("# clip_fusion")
    resolved = CliRunner().invoke(
        cli, ["pipelines", "show", "clip_fusion", "--set", "stages.fuse.alpha=0.25"]
    )
    assert "alpha: 0.25" in resolved.output


def _open(path):
    from PIL import Image

    return Image.open(path).convert("RGB")
