"""ImageScope, CoTMR, MCoT-RE, SETR and SC4CIR end to end on a tiny gallery.

First with tiny random models built from configs and loaded through transformers (tiny CLIP,
BLIP, LM and chat VLM): every stage's real loading and generation path runs, and a second run is
served from the cache. Then with the scripted backend, whose answers are controlled, so that
each ranking can be checked against the scoring formulas applied to the same tiny-CLIP
embeddings.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cir import Query
from cir.cache import ContentCache
from cir.gallery_captions import set_caption_sidecar
from cir.index import GalleryIndex
from cir.llm import load_backend
from cir.pipeline import load_pipeline
from cir.resources import Resources
from cir.scoring import l2_normalize, weimocir_scores
from cir.scoring.objects import multi_grained_scores
from cir.scoring.verification import reverse_query_similarity
from tests.integration.test_rerank_pipelines import CallCounter

SOLID = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220), "white": (250,) * 3}
PIPELINES = ("imagescope", "cotmr", "mcotre", "setr", "cirevl_sc4cir")
PROPOSITIONS = '{"questions": [["Is it blue?", "yes"], ["Is there a cat?", "no"]]}'


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_clip):
    from skimage import data

    from cir.models import load_encoder

    folder = tmp_path_factory.mktemp("reasoning_gallery")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((96, 72)).save(
            folder / f"{name}.jpg"
        )
    for name, colour in SOLID.items():
        Image.new("RGB", (64, 64), colour).save(folder / f"{name}.png")
    encoder = load_encoder(tiny_clip)
    out = tmp_path_factory.mktemp("reasoning_index")
    index = GalleryIndex.build(folder, encoder, out=out, num_workers=0, progress=False)
    captions = [[f"a photo of {gid.split('.')[0]}"] for gid in index.ids]
    set_caption_sidecar(index, captions, encoder, source="test")
    return {"index": index, "encoder": encoder}


def queries(n=2) -> list[Query]:
    texts = ["make it blue", "add a cat next to it"]
    return [Query(texts[i], reference_id="red.png" if i == 0 else "coffee.jpg", id=f"q{i}")
            for i in range(n)]  # fmt: skip


def tiny_overrides(name: str, models: dict[str, str]) -> dict:
    vlm = {"backend": "transformers", "model": models["vlm"]}
    lm = {"backend": "transformers", "model": models["lm"]}
    if name == "imagescope":
        return {"stages.caption.captioner": vlm, "stages.caption.max_tokens": 8,
                "stages.decompose.llm": lm, "stages.decompose.max_tokens": 16,
                "stages.propositions.llm": scripted("tiny-prop", default=PROPOSITIONS),
                "stages.verify_propositions.llm": vlm, "stages.verify_propositions.top_n": 4,
                "stages.evaluate.llm": vlm, "stages.evaluate.top_n": 2,
                "stages.evaluate.max_tokens": 6, "stages.evaluate.tile_size": 56,
                "stages.retrieve.k": 6}  # fmt: skip
    if name in ("cotmr", "mcotre"):
        extra = {"stages.rescore.top_n": 6} if name == "mcotre" else {}
        return {"stages.analyze.llm": vlm, "stages.analyze.max_tokens": 16,
                "stages.retrieve.k": 6, **extra}  # fmt: skip
    if name == "setr":
        return {"stages.rerank.llm": vlm, "stages.rerank.top_n": 4, "stages.retrieve.k": 6}
    return {"stages.caption.captioner": {"backend": "transformers", "model": models["blip"]},
            "stages.caption.max_tokens": 6, "stages.recompose.llm": lm,
            "stages.recompose.max_tokens": 8, "stages.consistency.llm": vlm,
            "stages.consistency.top_n": 4, "stages.consistency.max_tokens": 8,
            "stages.retrieve.k": 6}  # fmt: skip


def backends(pipe, resources) -> list:
    specs = []
    for stage in pipe.stages:
        for param in stage.language_models:
            spec = getattr(stage.params, param)
            if spec not in specs:
                specs.append(spec)
    return [load_backend(spec, resources) for spec in specs]


# ---------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("name", PIPELINES)
def test_each_method_runs_on_tiny_models_and_again_from_the_cache(
    name, tiny_models, world, tmp_path
):
    index = world["index"]
    pipe = load_pipeline(name, overrides=tiny_overrides(name, tiny_models))
    resources, cache = Resources(), ContentCache(tmp_path)
    first = pipe.run(queries(), index, batch_size=2, cache=cache, resources=resources)
    counters = [CallCounter(b) for b in backends(pipe, resources)]
    second = pipe.run(queries(), index, batch_size=2, cache=cache, resources=resources)
    assert [c.requests for c in counters] == [0] * len(counters)
    for a, b in zip(first, second, strict=True):
        assert len(a.ranking) == 6 and len(set(a.ranking.ids)) == 6
        assert a.ranking == b.ranking
        assert [r.name for r in a.trace] == [s.instance for s in pipe.stages]
        assert all(r.cache_misses == 0 for r in b.trace)
    if name == "imagescope":  # the tiny VLM answered 2 propositions for each of the top 4
        answers = first[0].data["verify_propositions"]["answers"]
        assert len(answers) == 4 and all(len(a) == 2 for a in answers.values())


# ---------------------------------------------------------------------------- scripted
def scripted(name: str, **answers) -> dict:
    return {"backend": "scripted", "name": name, **answers}


def text_vectors(world, texts: list[str]) -> torch.Tensor:
    return world["encoder"].encode_texts(texts).float()


def top_ids(index, scores: torch.Tensor, k: int, skip=()) -> list[str]:
    order = [index.ids[i] for i in scores.argsort(descending=True).tolist()]
    return [i for i in order if i not in skip][:k]


def test_cotmr_ranks_by_the_multi_grained_score(world):
    index = world["index"]
    answer = (
        '{"reasoning": "r", "target_caption": "a blue square", '
        '"present_objects": ["blue square", "table"], "absent_objects": ["red square"]}'
    )
    over = {"stages.analyze.llm": scripted("cotmr", default=answer), "stages.retrieve.k": 5}
    pipe = load_pipeline("cotmr", overrides=over)
    state = pipe.run(queries(1), index)[0]
    caption = text_vectors(world, ["a blue square"])
    present = text_vectors(world, ["a photo of blue square", "a photo of table"])
    absent = text_vectors(world, ["a photo of red square"])
    gallery = index.embeddings.float()
    want = multi_grained_scores(caption, [present], [absent], gallery, 0.5, 0.5)[0]
    assert list(state.ranking.ids) == top_ids(index, want, 5)
    assert state.embeddings["present"].shape[0] == 2 and state.reasoning == ["r"]


def test_mcotre_filters_with_one_caption_and_reranks_with_both_and_the_image(world):
    index = world["index"]
    answer = ('{"reasoning": "r", "modification_caption": "a blue square", '
              '"integrated_caption": "a bright blue square picture"}')  # fmt: skip
    over = {"stages.analyze.llm": scripted("mcotre", default=answer), "stages.retrieve.k": 5,
            "stages.rescore.top_n": 5}  # fmt: skip
    state = load_pipeline("mcotre", overrides=over).run(queries(1), index)[0]
    mod, integ = text_vectors(world, ["a blue square", "a bright blue square picture"])
    image = index.embedding("red.png").float()
    gallery = index.embeddings.float()
    kept = top_ids(index, gallery @ mod, 5)
    fused = l2_normalize(0.4 * mod + 0.4 * integ + 0.2 * image)
    rescored = sorted(kept, key=lambda i: -float(index.embedding(i).float() @ fused))
    assert list(state.ranking.ids) == rescored
    assert state.targets == ["a blue square", "a bright blue square picture"]


def test_imagescope_retrieves_with_three_descriptions_then_verifies_and_evaluates(world):
    index = world["index"]
    decompose = ('```json\n{"edits": [["Modification", "Make it blue."]], "targets": '
                 '["a blue square", "a blue picture", "a plain blue square"]}\n```')  # fmt: skip
    over = {
        "stages.caption.captioner": scripted("is-cap", default="a red square"),
        "stages.decompose.llm": scripted("is-dec", default=decompose),
        "stages.propositions.llm": scripted(
            "is-prop", default='{"questions": [["Is it blue?", "yes"], ["Is it a photo?", "no"]]}'
        ),
        "stages.verify_propositions.llm": scripted("is-vqa", by_substring={"blue": "yes"},
                                                   default="no"),
        "stages.evaluate.llm": scripted("is-eval", responses=["Answer: No", "Answer: Yes"]),
        "stages.verify_propositions.top_n": 4, "stages.retrieve.k": 6,
    }  # fmt: skip
    state = load_pipeline("imagescope", overrides=over).run(queries(1), index)[0]
    targets = text_vectors(world, ["a blue square", "a blue picture", "a plain blue square"])
    captions = index.sidecar("captions")[0].float()
    query = l2_normalize(targets.mean(dim=0))[None]
    want = weimocir_scores(query, index.embeddings.float(), captions, None, beta=0.15)[0]
    retrieved = top_ids(index, want, 6)
    # every candidate answers "yes, no" and matches one proposition: the stable sort keeps
    # the order; the evaluator rejects the first and accepts the second candidate
    assert state.data["verify_propositions"]["order"] == retrieved[:4]
    assert list(state.ranking.ids) == [retrieved[1], retrieved[0], *retrieved[2:]]
    assert state.data["evaluate"]["verdicts"] == {retrieved[0]: False, retrieved[1]: True}


def test_setr_coarse_stage_is_the_standardised_minimum(world):
    index = world["index"]
    over = {"stages.rerank.llm": scripted("setr", default="Yes"), "stages.retrieve.k": 6,
            "stages.rerank.top_n": 3}  # fmt: skip
    state = load_pipeline("setr", overrides=over).run(queries(1), index)[0]
    gallery = index.embeddings.float()
    v = gallery @ index.embedding("red.png").float()
    t = gallery @ text_vectors(world, ["make it blue"])[0]
    z = torch.minimum(
        (v - v.mean()) / v.std(unbiased=False), (t - t.mean()) / t.std(unbiased=False)
    )
    want = top_ids(index, z, 6)
    assert list(state.ranking.ids) == want  # every candidate said yes: the order stays
    assert state.data["rerank"]["mode"] == "verify"


def describe_change(req) -> str:
    """The scripted checker: the reverse text for one image, a colour change for two."""
    if len(req.images) == 1:
        return "a red square"
    pixel = req.images[1].getpixel((2, 2))
    names = {v: k for k, v in SOLID.items()}
    return f"make it {names[pixel]}" if pixel in names else "show a different photo"


def test_sc4cir_adds_the_two_reverse_checks_to_the_original_score(world):
    from cir.llm import ScriptedLLM, spec_key

    index = world["index"]
    spec = scripted("sc4cir", default="unused")
    resources = Resources()
    resources.get(spec_key(spec), lambda: ScriptedLLM(fn=describe_change))
    over = {"stages.caption.captioner": scripted("sc-cap", default="a red square"),
            "stages.recompose.llm": scripted("sc-rc", default="Target Description: blue square"),
            "stages.consistency.llm": spec, "stages.consistency.top_n": 6,
            "stages.retrieve.k": 6}  # fmt: skip
    state = load_pipeline("cirevl_sc4cir", overrides=over).run(
        queries(1), index, resources=resources
    )[0]
    data = state.data["consistency"]
    before = list(data["scores"])  # the retrieval order, with the original scores
    cands = torch.stack([index.embedding(i).float() for i in before])
    reverse = text_vectors(world, ["a red square"])[0]
    s1 = reverse_query_similarity(cands, reverse, index.embedding("red.png").float(), 0.8)
    descriptions = [describe_change_for(i) for i in before]
    texts = text_vectors(world, ["make it blue", *descriptions])
    s2 = texts[1:] @ texts[0]
    for k, gid in enumerate(before):
        got = data["scores"][gid]
        assert got["reverse_query"] == pytest.approx(float(s1[k]), abs=1e-3)
        assert got["reverse_caption"] == pytest.approx(float(s2[k]), abs=1e-3)
        assert got["total"] == pytest.approx(got["original"] + float(s1[k] + s2[k]), abs=1e-3)
    totals = [data["scores"][i]["total"] for i in state.ranking.ids]
    assert totals == sorted(totals, reverse=True)
    assert (
        data["reverse_text"] == "a red square"
        and data["descriptions"]["blue.png"] == "make it blue"
    )


def describe_change_for(gid: str) -> str:
    colour = gid.split(".")[0]
    return f"make it {colour}" if colour in SOLID else "show a different photo"


def test_encode_text_reads_texts_and_empty_lists_from_data(world):
    from cir import QueryState
    from cir.errors import DataError
    from cir.stages.base import Context
    from cir.stages.encode_text import EncodeText
    from cir.types import StageRecord

    stage = EncodeText(source="data.objects", output="objects", combine="none")
    ctx = Context(index=world["index"])
    stage.setup(ctx)
    states = [QueryState(Query("x", id=f"q{i}")) for i in range(3)]
    for state, value in zip(states, (["a cat", "a dog"], [], "a hat"), strict=True):
        state.data["objects"] = value
        state.trace.append(StageRecord(stage="encode_text", name="encode_text"))
    stage.run(states, ctx)
    assert [s.embeddings["objects"].shape[0] for s in states] == [2, 0, 1]
    torch.testing.assert_close(
        states[2].embeddings["objects"][0], text_vectors(world, ["a hat"])[0]
    )
    states[0].data["objects"] = {"not": "texts"}
    with pytest.raises(DataError, match="not a text or a list of texts"):
        stage.run(states[:1], ctx)
    mean = EncodeText(source="data.objects", output="o", combine="mean")
    mean.setup(ctx)
    with pytest.raises(DataError, match="nothing to average"):
        mean.run(states[1:2], ctx)


# ---------------------------------------------------------------------------- consistency
def run_consistency(world, llm, **params):
    from cir import QueryState
    from cir.llm import spec_key
    from cir.stages.base import Context
    from cir.stages.consistency import Consistency
    from cir.types import Ranking, StageRecord

    index = world["index"]
    spec = scripted(f"consistency{id(llm)}", default="unused")
    resources = Resources()
    resources.get(spec_key(spec), lambda: llm)
    stage = Consistency(llm=spec, **params)
    ctx = Context(index=index, resources=resources)
    stage.setup(ctx)
    state = QueryState(Query("make it blue", reference_id="red.png", id="q"))
    state.ranking = Ranking(tuple(index.ids), tuple(float(-i) for i in range(len(index))))
    state.embeddings["image"] = index.embedding("red.png").float()
    state.trace.append(StageRecord(stage="consistency", name="consistency"))
    return stage.run([state], ctx)[0]


def test_consistency_fallbacks_leave_a_check_out_or_fill_with_the_mean(world):
    from cir.llm import ScriptedLLM

    def answers(req) -> str:
        if len(req.images) == 1:
            return ""  # the reverse text fails: that check is left out
        return "" if req.images[1].getpixel((2, 2)) == SOLID["blue"] else "make it green"

    state = run_consistency(world, ScriptedLLM(fn=answers), top_n=4)
    data, record = state.data["consistency"], state.record("consistency")
    head = list(data["scores"])
    assert record.fallbacks == 2 and data["reverse_text"] is None
    assert all(row["reverse_query"] == 0.0 for row in data["scores"].values())
    filled = [data["scores"][gid]["reverse_caption"] for gid in head]
    described = [v for gid, v in zip(head, filled, strict=True) if gid != "blue.png"]
    assert "blue.png" in head  # ids are sorted: astronaut, blue, chelsea, coffee, ...
    blue = filled[head.index("blue.png")]
    assert blue == pytest.approx(sum(described) / len(described), abs=1e-5)
    assert state.ranking.ids[4:] == tuple(world["index"].ids[4:])


def test_consistency_runs_one_check_with_its_own_weight(world):
    from cir.llm import ScriptedLLM

    llm = ScriptedLLM(fn=describe_change)
    state = run_consistency(world, llm, top_n=3, checks=["reverse_caption"],
                            weight_original=0.0)  # fmt: skip
    assert len(llm.calls) == 3 and all(len(c.images) == 2 for c in llm.calls)
    scores = state.data["consistency"]["scores"]
    assert all("reverse_query" not in row for row in scores.values())
    totals = [scores[gid]["total"] for gid in state.ranking.ids[:3]]
    assert totals == sorted(totals, reverse=True)
    assert all(r["total"] == pytest.approx(r["reverse_caption"]) for r in scores.values())


def test_consistency_refuses_bad_settings(world, tmp_path):
    from cir.errors import ConfigError
    from cir.llm import ScriptedLLM
    from cir.stages.consistency import Consistency

    with pytest.raises(ConfigError, match="checks"):
        Consistency(checks=[])
    with pytest.raises(ConfigError, match="alpha"):
        Consistency(alpha=2.0)
    own = tmp_path / "one_image.v1.md"
    own.write_text("---\nvariables: []\nimages: 1\nparser: {kind: text}\n---\nDescribe.")
    with pytest.raises(ConfigError, match="takes 1 image"):
        run_consistency(world, ScriptedLLM(default="x"), reverse_caption_prompt=str(own))


def test_the_default_verifier_family_runs_raw_through_transformers(world, tmp_path):
    """ImageScope's verifier is a PaliGemma: no chat template, the raw prompt and the image."""
    from cir import QueryState
    from cir.rerank.yesno import parse_yes_no
    from cir.stages.base import Context
    from cir.stages.verify_propositions import VerifyPropositions
    from cir.testing.lm import tiny_paligemma
    from cir.types import Ranking, StageRecord

    index = world["index"]
    spec = {"backend": "transformers", "model": tiny_paligemma(tmp_path / "paligemma"),
            "use_chat_template": False}  # fmt: skip
    stage = VerifyPropositions(llm=spec, top_n=3, max_tokens=3)
    resources = Resources()
    ctx = Context(index=index, resources=resources)
    stage.setup(ctx)
    texts, generate = [], stage.backend.generate

    def recorded(requests):
        assert all(len(r.messages) == 1 and len(r.images) == 1 for r in requests)
        generations = generate(requests)
        texts.extend(g.texts[0] for g in generations)
        return generations

    stage.backend.generate = recorded
    state = QueryState(Query("make it blue", reference_id="red.png", id="q"))
    state.ranking = Ranking(tuple(index.ids), tuple(float(-i) for i in range(len(index))))
    state.data["questions"] = [["Is it blue?", "yes"], ["Is there a cat?", "no"]]
    state.trace.append(StageRecord(stage="verify_propositions", name="verify_propositions"))
    state = stage.run([state], ctx)[0]
    assert len(texts) == 3 * 2
    answers = state.data["verify_propositions"]["answers"]
    assert len(answers) == 3 and all(
        len(a) == 2 and set(a) <= {True, False} for a in answers.values()
    )
    assert sorted(state.ranking.ids[:3]) == sorted(index.ids[:3])
    unreadable = sum(parse_yes_no(t) is None for t in texts)  # each counted, read as "no"
    assert state.record("verify_propositions").fallbacks == unreadable
