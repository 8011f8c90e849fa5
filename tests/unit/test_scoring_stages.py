"""The scoring stages and retrieve rules on a weight-free index of random embeddings."""

import pytest
import torch

from cir import Query, QueryState
from cir.errors import ConfigError, DataError
from cir.index import GalleryIndex
from cir.scoring import (
    l2_normalize,
    ldre_divergence_topk,
    ldre_ensemble,
    ldre_weights,
    pdv_query,
    seize_scores,
    weimocir_query,
    weimocir_scores,
)
from cir.stages.base import Context
from cir.stages.ensemble import Ensemble
from cir.stages.pdv import PDV
from cir.stages.retrieve import Retrieve
from cir.types import StageRecord

D = 16


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(*shape, generator=g))


@pytest.fixture()
def index():
    idx = GalleryIndex.from_embeddings([f"g{i}" for i in range(40)], _unit(40, D, seed=1))
    idx.set_sidecar("captions", _unit(40, 3, D, seed=2).half(), {"k": 3})
    return idx


def _states(n, stage, seed=10, ref=True):
    out = []
    for i in range(n):
        s = QueryState(Query(f"q{i}", reference_id=f"g{i * 3}" if ref else None, id=f"q{i}"))
        for j, name in enumerate(("image", "text", "caption", "target", "query")):
            s.embeddings[name] = _unit(D, seed=seed + 10 * i + j)
        s.embeddings["targets"] = _unit(4, D, seed=seed + 10 * i + 7)
        s.embeddings["captions"] = _unit(4, D, seed=seed + 10 * i + 8)
        s.trace.append(StageRecord(stage=stage.name, name=stage.instance))
        out.append(s)
    return out


def test_pdv_stage_matches_function_and_skips_image_at_beta_one():
    stage = PDV(beta=0.75, alpha_image=1.4, alpha_text=1.2)
    states = stage.run(_states(3, stage), Context())
    for s in states:
        want = pdv_query(*(s.embeddings[n][None] for n in ("image", "caption", "target")))
        torch.testing.assert_close(s.embeddings["query"], want[0])
    assert "embeddings.image" not in PDV(beta=1.0).reads
    with pytest.raises(ConfigError, match="beta"):
        PDV(beta=1.5)


def test_pdv_auto_alpha_is_noted_per_query():
    stage = PDV(auto_alpha_image=True)
    states = stage.run(_states(2, stage), Context())
    alphas = [s.trace[-1].notes["alpha_image"] for s in states]
    assert alphas[0] != alphas[1]


@pytest.mark.parametrize("scope", ["query_set", "per_query"])
def test_ldre_stage_matches_pure_functions(index, scope):
    stage = Ensemble(mode="ldre", scope=scope)
    states = stage.run(_states(3, stage), Context(index=index))
    edits = torch.stack([s.embeddings["targets"] for s in states])
    caps = torch.stack([s.embeddings["captions"] for s in states])
    top = ldre_divergence_topk(edits, caps, index.embeddings.float(), k=5)
    weights, _ = ldre_weights(top, per_query=scope == "per_query")
    want = l2_normalize(ldre_ensemble(edits, weights))
    for i, s in enumerate(states):
        torch.testing.assert_close(s.embeddings["target"], want[i], atol=1e-5, rtol=0)
        row = weights if scope == "query_set" else weights[i]
        assert s.trace[-1].notes["weights"] == pytest.approx(row.tolist(), abs=1e-6)


def test_ldre_stage_errors_and_fallback(index):
    stage = Ensemble(mode="ldre")
    states = _states(2, stage)
    states[1].embeddings["targets"] = states[1].embeddings["targets"][:3]
    with pytest.raises(DataError, match="pairs edit i with caption i"):
        stage.run(states, Context(index=index))
    states[1].embeddings["captions"] = states[1].embeddings["captions"][:3]
    with pytest.raises(DataError, match="per_query"):
        stage.run(states, Context(index=index))
    same = _states(1, stage)
    same[0].embeddings["captions"] = same[0].embeddings["targets"].clone()
    out = stage.run(same, Context(index=index))[0]
    assert out.trace[-1].fallbacks == 1
    torch.testing.assert_close(
        out.embeddings["target"], l2_normalize(out.embeddings["targets"].mean(0))
    )


def test_mean_ensemble():
    stage = Ensemble(mode="mean", input="targets", output="t")
    s = stage.run(_states(1, stage), Context())[0]
    torch.testing.assert_close(s.embeddings["t"], l2_normalize(s.embeddings["targets"].mean(0)))
    assert stage.reads == ("embeddings.targets",)


def _ranked(index, stage, states):
    return stage.run(states, Context(index=index))


def test_retrieve_weimocir_reference_form_uses_reference_row(index):
    stage = Retrieve(k=40, rule="weimocir", rule_params={"beta": 0.1})
    states = _ranked(index, stage, _states(2, stage))
    caps, g = index.sidecar("captions")[0].float(), index.embeddings.float()
    for s in states:
        row = index.position(s.query.reference_id)
        qk = weimocir_query(caps[row], s.embeddings["text"].expand(3, -1))
        want = weimocir_scores(s.embeddings["query"][None], g, caps, qk[None], 0.1)[0]
        assert list(s.ranking.ids) == [index.ids[i] for i in want.topk(40).indices]
        assert s.trace[-1].fallbacks == 0


def test_retrieve_weimocir_counts_fallback_and_checks_shapes(index):
    stage = Retrieve(k=5, rule="weimocir")
    states = _ranked(index, stage, _states(2, stage, ref=False))
    assert [s.trace[-1].fallbacks for s in states] == [1, 1]
    bad = _states(1, stage, ref=False)
    bad[0].embeddings["reference_captions"] = _unit(2, D)
    with pytest.raises(DataError, match="per image"):
        _ranked(index, stage, bad)
    with pytest.raises(ConfigError, match="caption_query"):
        Retrieve(rule="weimocir", rule_params={"caption_query": "other"})


def test_retrieve_seize_and_reference_score(index):
    stage = Retrieve(k=40, query="target", rule="seize", rule_params={"reference_score": -1.0})
    states = _ranked(index, stage, _states(2, stage))
    g = index.embeddings.float()
    for s in states:
        want = seize_scores(s.embeddings["target"][None], s.embeddings["caption"][None], g)[0]
        want[index.position(s.query.reference_id)] = -1.0
        assert list(s.ranking.ids) == [index.ids[i] for i in want.topk(40).indices]
    assert stage.reads == ("embeddings.target", "embeddings.caption")


def test_retrieve_dot_rule_keeps_the_search_path(index):
    plain, rule = Retrieve(k=10), Retrieve(k=10, rule="dot", hubness={"method": "csls"})
    a = _ranked(index, plain, _states(2, plain))
    b = _ranked(index, rule, _states(2, rule))
    assert all(len(s.ranking) == 10 for s in a + b)
    assert "rule" not in a[0].trace[-1].notes and b[0].trace[-1].notes["rule"] == "dot"
    with pytest.raises(ConfigError, match="unknown scoring rule"):
        Retrieve(rule="nope")
    with pytest.raises(DataError, match="no sidecar"):
        missing = Retrieve(hubness={"method": "csls", "bank": "other"})
        _ranked(index, missing, _states(1, missing))
    with pytest.raises(ConfigError, match=r"hubness.*unknown parameter.*valid parameters: bank"):
        Retrieve(hubness={"methd": "csls"})


def test_retrieve_reference_mix_averages_text_and_reference_image(index):
    """CIReVL's GeneCIS focus-attribute query: normalize((normalize(t) + normalize(v)) / 2)."""
    stage = Retrieve(k=40, query="target", rule="reference_mix", restrict_key="candidates")
    states = _states(2, stage)
    for s in states:
        s.query.extras["candidates"] = [f"g{i}" for i in range(5, 20)]
        s.embeddings["target"] = 3.0 * s.embeddings["target"]  # the rule normalises it
    states = _ranked(index, stage, states)
    g = index.embeddings.float()
    for s in states:
        t = s.embeddings["target"] / s.embeddings["target"].norm()
        v = g[index.position(s.query.reference_id)]
        mixed = (t + v) / 2
        scores = g[5:20] @ (mixed / mixed.norm())
        assert list(s.ranking.ids) == [f"g{5 + int(i)}" for i in scores.argsort(descending=True)]
        assert s.ranking.scores[0] == pytest.approx(float(scores.max()), abs=1e-5)
        assert s.trace[-1].fallbacks == 0
    lone = _states(1, stage, ref=False)
    lone[0].query.extras["candidates"] = ["g1", "g2"]
    lone = _ranked(index, stage, lone)[0]
    assert lone.trace[-1].fallbacks == 1  # no reference image: the text query alone
    with pytest.raises(ConfigError, match="weight must be within"):
        Retrieve(rule="reference_mix", rule_params={"weight": 1.5})
