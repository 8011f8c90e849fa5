"""The stage contract, checked over every registered stage: defaults, params, ports, models."""

from __future__ import annotations

import dataclasses

import pytest

from cir.context import Context
from cir.models.spec import EncoderSpec
from cir.params import params_to_dict
from cir.pipeline import load_pipeline
from cir.pipeline_file import list_pipelines
from cir.stages.base import KINDS, Port, Stage, registered_stages
from cir.types import QueryState

FIELD_HEADS = {f.name for f in dataclasses.fields(QueryState)} | {"query", "scores"}
STAGES = registered_stages()


@pytest.fixture(params=sorted(STAGES), ids=str)
def stage_cls(request) -> type[Stage]:
    return STAGES[request.param]


def test_constructs_from_defaults_and_params_round_trip(stage_cls):
    stage = stage_cls()
    assert stage.instance == stage_cls.name
    again = stage_cls(**params_to_dict(stage.params))
    assert again.params == stage.params
    entry = stage.to_dict()
    assert entry["stage"] == stage_cls.name and "name" not in entry


def test_ports_name_state_fields_of_known_kinds(stage_cls):
    stage = stage_cls()
    for port in (*stage.bound_inputs(), *stage.bound_outputs()):
        assert isinstance(port, Port) and port.kind in KINDS
        assert "{" not in port.field, f"{port.field!r} has an unfilled placeholder"
        assert port.field.partition(".")[0] in FIELD_HEADS, port.field
    assert stage.writes, "a stage writes something"
    assert stage.reads == tuple(p.field for p in stage.bound_inputs())


def test_declared_models_and_held_attributes_are_real(stage_cls):
    fields = {f.name for f in dataclasses.fields(stage_cls.Params)}
    assert set(stage_cls.language_models) <= fields
    assert set(stage_cls.image_generators) <= fields
    if stage_cls.uses_encoder:
        assert {"model", "pretrained"} <= fields
    stage = stage_cls()
    uses = stage.models(Context(encoder=EncoderSpec("ViT-B-32/openai")))
    expected = [
        *stage_cls.language_models,
        *stage_cls.image_generators,
        *(["model"] if stage_cls.uses_encoder else []),
    ]
    assert [u.param for u in uses] == expected
    kinds = ["language"] * len(stage_cls.language_models)
    kinds += ["generator"] * len(stage_cls.image_generators)
    assert [u.kind for u in uses] == kinds + ["encoder"] * stage_cls.uses_encoder
    stage.__dict__.update({attr: object() for attr in stage_cls.held})
    stage.teardown()
    assert not any(attr in stage.__dict__ for attr in stage_cls.held)


def test_docstring_says_what_it_does(stage_cls):
    doc = stage_cls.__doc__ or ""
    assert len(doc.split()) >= 12 and "Example" in doc


def test_every_shipped_pipeline_prints_its_flow():
    for name in list_pipelines():
        pipe = load_pipeline(name)
        flow = pipe.flow()
        assert all(stage.instance in flow for stage in pipe.stages)
        assert "from query" in flow
