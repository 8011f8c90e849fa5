"""The pipeline engine: YAML round trip, overrides, presets, validation, batching and trace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import yaml

from cir import ConfigError, Query
from cir.pipeline import (
    Pipeline,
    apply_overrides,
    list_pipelines,
    load_pipeline,
    parse_override,
)
from cir.stages.base import Port, Stage, register_stage, registered_stages, registry_snapshot


@dataclass(frozen=True)
class _UpperParams:
    suffix: str = "!"
    repeat: int = 1


class _Upper(Stage):
    """Test stage: targets = upper-cased modification text."""

    name = "test_upper"
    Params = _UpperParams
    reads = ("query.text",)
    writes = ("targets",)
    batches: ClassVar[list[int]] = []

    def run(self, states, ctx):
        type(self).batches.append(len(states))
        for state in states:
            state.targets = [state.query.text.upper() + self.params.suffix] * self.params.repeat
            self.record(state).notes["seen"] = True
        return states


class _NeedsCaptions(Stage):
    name = "test_needs_captions"
    reads = ("captions",)
    writes = ("targets",)

    def run(self, states, ctx):
        return states


@pytest.fixture(autouse=True, scope="module")
def _test_stages():
    """The test stages exist for this module only (the global registry is restored)."""
    with registry_snapshot():
        register_stage(_Upper)
        register_stage(_NeedsCaptions)
        yield


def test_stages_registered_by_tests_do_not_leak():
    assert "test_upper" in registered_stages()
    with registry_snapshot():
        register_stage(type("_Temp", (Stage,), {"name": "test_temp", "run": lambda s, x, c: x}))
        assert "test_temp" in registered_stages()
    assert "test_temp" not in registered_stages()


def _spec(**params):
    entry = {"stage": "test_upper"}
    if params:
        entry["params"] = params
    return {"name": "upper", "stages": [entry]}


def test_runs_in_batches_with_a_trace_per_stage():
    _Upper.batches.clear()
    pipe = Pipeline.from_dict(_spec(suffix="?"))
    states = pipe.run([Query(f"q{i}") for i in range(5)], batch_size=2, progress=False)
    assert _Upper.batches == [2, 2, 1]
    assert [s.targets for s in states] == [[f"Q{i}?"] for i in range(5)]
    record = states[0].trace[0]
    assert (record.stage, record.name, record.notes) == ("test_upper", "test_upper", {"seen": True})
    assert record.seconds >= 0


def test_on_stage_is_called_once_before_each_stage():
    spec = {"stages": [{"stage": "test_upper"}, {"stage": "test_upper", "name": "again"}]}
    calls = []
    Pipeline.from_dict(spec).run(
        [Query("a"), Query("b"), Query("c")], batch_size=2, on_stage=lambda *a: calls.append(a)
    )
    assert calls == [(0, 2, "test_upper"), (1, 2, "again")]  # stage by stage, not per batch


def test_yaml_round_trip_keeps_every_parameter():
    pipe = Pipeline.from_dict(_spec(suffix="#", repeat=2))
    again = Pipeline.from_yaml(pipe.to_yaml())
    assert again.to_dict() == pipe.to_dict()
    assert yaml.safe_load(pipe.to_yaml())["stages"][0]["params"] == {"suffix": "#", "repeat": 2}


def test_dotted_overrides_are_parsed_as_yaml_values():
    assert parse_override("stages.fuse.alpha=0.7") == ("stages.fuse.alpha", 0.7)
    assert parse_override("stages.x.flag=true") == ("stages.x.flag", True)
    assert parse_override("stages.x.items=[a, b]") == ("stages.x.items", ["a", "b"])
    pipe = Pipeline.from_dict(_spec(), overrides=["stages.test_upper.repeat=3"])
    assert pipe.stage("test_upper").params.repeat == 3


def test_nested_override_creates_mappings():
    spec = apply_overrides(_spec(), ["stages.test_upper.llm.model=qwen"])
    assert spec["stages"][0]["params"]["llm"] == {"model": "qwen"}


def test_presets_apply_before_overrides():
    spec = _spec() | {"presets": {"loud": {"stages.test_upper.suffix": "!!!"}}}
    assert Pipeline.from_dict(spec, preset="loud").stage("test_upper").params.suffix == "!!!"
    both = Pipeline.from_dict(spec, overrides=["stages.test_upper.suffix=."], preset="loud")
    assert both.stage("test_upper").params.suffix == "."
    with pytest.raises(ConfigError, match=r"unknown preset 'quiet'.*loud"):
        Pipeline.from_dict(spec, preset="quiet")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_spec(sufix="!"), r"unknown parameter\(s\) sufix; valid parameters: repeat, suffix"),
        (_spec(repeat="two"), r"parameter 'repeat' must be int, got 'two'"),
        ({"stages": [{"stage": "no_such_stage"}]}, r"unknown stage 'no_such_stage'.*test_upper"),
        ({"stages": []}, r"non-empty list under `stages:`"),
        ({"stages": [{"stage": "test_upper", "alpha": 1}]}, r"unknown key\(s\) alpha"),
        (_spec() | {"stagez": 1}, r"unknown top-level key\(s\) stagez"),
    ],
)
def test_invalid_pipelines_name_what_is_valid(spec, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_dict(spec)


def test_missing_field_names_the_stages_that_could_write_it():
    with pytest.raises(ConfigError) as err:
        Pipeline.from_dict({"stages": [{"stage": "test_needs_captions"}]})
    assert "reads 'captions'" in str(err.value)


def test_override_of_an_unknown_stage_lists_the_stages():
    with pytest.raises(ConfigError, match=r"override names stage 'fuse'.*test_upper"):
        Pipeline.from_dict(_spec(), overrides=["stages.fuse.alpha=1"])
    with pytest.raises(ConfigError, match="must look like"):
        Pipeline.from_dict(_spec(), overrides=["stages.fuse.alpha"])


def test_duplicate_stage_names_are_refused():
    spec = {"stages": [{"stage": "test_upper"}, {"stage": "test_upper"}]}
    with pytest.raises(ConfigError, match="two stages are named 'test_upper'"):
        Pipeline.from_dict(spec)
    spec["stages"][1]["name"] = "again"
    assert [s.instance for s in Pipeline.from_dict(spec).stages] == ["test_upper", "again"]


def test_every_shipped_pipeline_loads_validates_and_round_trips():
    names = list_pipelines()
    assert {"clip_fusion", "image_only", "text_only"} <= set(names)
    for name in names:
        pipe = load_pipeline(name)
        assert pipe.name == name
        assert Pipeline.from_yaml(pipe.to_yaml()).to_dict() == pipe.to_dict()
        for preset in pipe.presets:
            load_pipeline(name, preset=preset)


def test_unknown_pipeline_lists_the_shipped_ones(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown pipeline 'nope'; shipped pipelines: .*clip_fusion"
    ):
        load_pipeline("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed")
    with pytest.raises(ConfigError, match="does not parse"):
        load_pipeline(bad)


class _Painter(Stage):
    """Test stage: draws a picture and an embedding per query (for state clean-up)."""

    name = "test_painter"
    outputs = (Port("data.picture", "data"), Port("embeddings.painted", "vector"))

    def run(self, states, ctx):
        from PIL import Image

        for state in states:
            state.data["picture"] = Image.new("RGB", (4, 4))
            state.data["note"] = "small"
            state.embeddings["painted"] = torch.ones(3)
        return states


@pytest.mark.parametrize("keep", [True, False])
def test_unread_pictures_and_embeddings_are_dropped_when_asked(keep):
    from cir.execution import RunGroup

    with registry_snapshot():
        register_stage(_Painter)
        spec = {"stages": [{"stage": "test_painter"}, {"stage": "test_upper"}]}
        pipe = Pipeline.from_dict(spec)
    [states] = pipe.run_groups(
        [RunGroup([Query("a")])], keep_artifacts=keep, keep_embeddings=keep, progress=False
    )
    assert ("picture" in states[0].data) is keep and ("painted" in states[0].embeddings) is keep
    assert states[0].data["note"] == "small"  # plain values stay
