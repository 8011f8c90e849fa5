"""The transformers backend with tiny models built from configs: a Qwen2 LM, a Qwen2-VL, BLIP."""

import math

import pytest
from PIL import Image

from cir.errors import BackendError
from cir.llm import ChatMessage, ChatRequest, Sampling, load_backend
from cir.resources import Resources
from cir.testing.lm import tiny_blip_captioner, tiny_causal_lm, tiny_chat_vlm

RED = Image.new("RGB", (80, 60), (220, 30, 30))
STRIPES = Image.new("RGB", (60, 90), (20, 20, 200))
STRIPES.paste((250, 250, 0), (0, 0, 60, 30))

PROMPTS = ["a red dress", "two dogs running on the beach at sunset near the water", "yes"]


@pytest.fixture(scope="module")
def resources():
    return Resources()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lms")
    return {
        "causal_lm": tiny_causal_lm(root / "lm"),
        "vlm": tiny_chat_vlm(root / "vlm"),
        "captioner": tiny_blip_captioner(root / "blip"),
    }


def backend(model_dirs, resources, kind, **options):
    spec = {"backend": "transformers", "model": model_dirs[kind], **options}
    return load_backend(spec, resources=resources)


def requests_for(kind, **sampling):
    images = [] if kind == "causal_lm" else [RED]
    reqs = [ChatRequest.from_prompt(p, images=images, max_tokens=8, **sampling) for p in PROMPTS]
    if kind == "captioner":  # one unconditional caption and two with the same prompt
        reqs = [
            ChatRequest.from_prompt(p, images=[im], max_tokens=8)
            for p, im in [("", RED), ("a photo of", RED), ("a photo of", STRIPES)]
        ]
    return reqs


@pytest.mark.parametrize("kind", ["causal_lm", "vlm", "captioner"])
def test_picks_the_path_from_the_config(model_dirs, resources, kind):
    llm = backend(model_dirs, resources, kind)
    assert llm.kind == kind
    assert llm.identity == f"transformers:{model_dirs[kind]}:auto"


@pytest.mark.parametrize("kind", ["causal_lm", "vlm", "captioner"])
def test_batched_greedy_equals_one_by_one(model_dirs, resources, kind):
    llm = backend(model_dirs, resources, kind)
    reqs = requests_for(kind)
    batched = llm.generate(reqs)
    single = [llm.generate([r])[0] for r in reqs]
    assert [g.texts for g in batched] == [g.texts for g in single]
    assert all(len(g.texts) == 1 and g.text for g in batched)
    assert len({g.text for g in batched}) > 1  # the prompts matter


def test_micro_batches_give_the_same_results(model_dirs, resources):
    big = backend(model_dirs, resources, "causal_lm")
    small = backend(model_dirs, resources, "causal_lm", batch_size=2)
    assert small is not big
    reqs = [ChatRequest.from_prompt(f"{p} {i}", max_tokens=6) for i, p in enumerate(PROMPTS * 2)]
    assert [g.texts for g in small.generate(reqs)] == [g.texts for g in big.generate(reqs)]


@pytest.mark.parametrize("kind", ["causal_lm", "vlm", "captioner"])
def test_n_samples_repeat_for_a_seed(model_dirs, resources, kind):
    llm = backend(model_dirs, resources, kind)
    images = [] if kind == "causal_lm" else [RED]

    def sample(seed):
        req = ChatRequest.from_prompt(
            "describe", images=images, n=4, temperature=1.0, top_p=0.95, seed=seed, max_tokens=8
        )
        [gen] = llm.generate([req])
        return gen.texts

    first = sample(7)
    assert len(first) == 4
    assert len(set(first)) > 1  # really sampled
    assert sample(7) == first
    assert sample(8) != first


@pytest.mark.parametrize("kind", ["causal_lm", "captioner"])
def test_sampled_answers_do_not_depend_on_the_batch(model_dirs, resources, kind):
    llm = backend(model_dirs, resources, kind)
    sampling = dict(n=3, temperature=1.0, top_p=0.95, max_tokens=8)
    images = [] if kind == "causal_lm" else [RED]
    reqs = [ChatRequest.from_prompt(p, images=images, seed=0, **sampling) for p in PROMPTS]
    together = llm.generate(reqs)
    alone = [llm.generate([r])[0] for r in reqs]
    reversed_order = llm.generate(reqs[::-1])[::-1]
    assert [g.texts for g in together] == [g.texts for g in alone]
    assert [g.texts for g in reversed_order] == [g.texts for g in alone]


def test_greedy_n_repeats_the_answer_and_keeps_the_callers_rng(model_dirs, resources):
    import torch

    llm = backend(model_dirs, resources, "causal_lm")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    [gen] = llm.generate([ChatRequest.from_prompt("a red dress", n=3, max_tokens=6)])
    llm.generate([ChatRequest.from_prompt("x", n=2, temperature=1.0, seed=5, max_tokens=4)])
    assert torch.equal(torch.rand(3), expected)
    [one] = llm.generate([ChatRequest.from_prompt("a red dress", max_tokens=6)])
    assert gen.texts == one.texts * 3
    assert gen.completion_tokens == 3 * one.completion_tokens


def test_the_vlm_reads_its_images(model_dirs, resources):
    llm = backend(model_dirs, resources, "vlm")
    with_red, with_stripes, without = llm.generate(
        [
            ChatRequest.from_prompt("what is this?", images=[RED], max_tokens=8),
            ChatRequest.from_prompt("what is this?", images=[STRIPES], max_tokens=8),
            ChatRequest.from_prompt("what is this?", max_tokens=8),
        ]
    )
    assert with_red.text != with_stripes.text
    assert with_red.prompt_tokens > without.prompt_tokens  # image tokens in the prompt


def test_vlm_takes_images_in_several_messages(model_dirs, resources):
    llm = backend(model_dirs, resources, "vlm")
    req = ChatRequest(
        (
            ChatMessage("system", "Compare the images."),
            ChatMessage("user", "first", (RED,)),
            ChatMessage("user", "second", (STRIPES,)),
        ),
        Sampling(max_tokens=4),
    )
    [one_image] = llm.generate([ChatRequest.from_prompt("first", images=[RED], max_tokens=4)])
    [gen] = llm.generate([req])
    assert gen.prompt_tokens > one_image.prompt_tokens


def test_captioner_needs_one_image(model_dirs, resources):
    llm = backend(model_dirs, resources, "captioner")
    with pytest.raises(BackendError, match="exactly one image per request, got 0"):
        llm.generate([ChatRequest.from_prompt("a photo of")])


def test_captioner_reads_the_image(model_dirs, resources):
    llm = backend(model_dirs, resources, "captioner")
    red, stripes = llm.generate(
        [
            ChatRequest.from_prompt("", images=[im], max_tokens=8, logprobs=3)
            for im in (RED, STRIPES)
        ]
    )
    assert red.first_token_logprobs != stripes.first_token_logprobs


def test_text_model_refuses_images(model_dirs, resources):
    llm = backend(model_dirs, resources, "causal_lm")
    with pytest.raises(BackendError, match="text-only model and cannot read the 1 image"):
        llm.generate([ChatRequest.from_prompt("hi", images=[RED])])


@pytest.mark.parametrize("kind", ["causal_lm", "vlm", "captioner"])
def test_first_token_logprobs(model_dirs, resources, kind):
    llm = backend(model_dirs, resources, kind)
    req = requests_for(kind)[1]
    plain = llm.generate([req])[0]
    assert plain.first_token_logprobs is None
    asked = ChatRequest(req.messages, Sampling(max_tokens=8), logprobs=5)
    [gen] = llm.generate([asked])
    assert gen.texts == plain.texts
    [row] = gen.first_token_logprobs
    assert 1 <= len(row) <= 5
    assert all(v <= 0 for v in row.values())
    assert math.log(sum(math.exp(v) for v in row.values())) <= 1e-6
    best = max(row, key=row.get).strip()
    if best and kind != "captioner":  # greedy decoding starts with the most likely token
        assert gen.text.startswith(best)


def test_raw_prompt_without_chat_template(model_dirs, resources):
    templated = backend(model_dirs, resources, "causal_lm")
    raw = backend(model_dirs, resources, "causal_lm", use_chat_template=False)
    assert raw.identity.endswith(":raw")
    req = ChatRequest.from_prompt("a red dress", max_tokens=4)
    expected = len(raw.tokenizer("a red dress", add_special_tokens=False)["input_ids"])
    assert raw.generate([req])[0].prompt_tokens == expected
    assert templated.generate([req])[0].prompt_tokens > expected


def test_device_map_auto_loads_through_accelerate(model_dirs, resources):
    llm = backend(model_dirs, resources, "causal_lm", device_map="auto")
    assert llm is not backend(model_dirs, resources, "causal_lm")
    assert next(llm.model.parameters()).device.type == "cpu"
    reqs = requests_for("causal_lm")
    reference = backend(model_dirs, resources, "causal_lm")
    assert [g.texts for g in llm.generate(reqs)] == [g.texts for g in reference.generate(reqs)]


def test_missing_model_is_a_clear_error(tmp_path, resources):
    with pytest.raises(BackendError, match="cannot load the transformers model"):
        load_backend({"backend": "transformers", "model": str(tmp_path / "nope")}, resources)


def test_same_spec_shares_one_model(model_dirs, resources):
    a = backend(model_dirs, resources, "causal_lm")
    b = load_backend({"model": model_dirs["causal_lm"], "backend": "transformers"}, resources)
    assert a is b


def test_beam_search_decodes_deterministically(model_dirs, resources):
    llm = backend(model_dirs, resources, "captioner")
    beams = ChatRequest.from_prompt("", images=[RED], max_tokens=8, num_beams=3)
    first, again = llm.generate([beams]), llm.generate([beams])
    assert first[0].texts == again[0].texts and first[0].text
    greedy = llm.generate([ChatRequest.from_prompt("", images=[RED], max_tokens=8)])[0]
    assert greedy.texts and isinstance(greedy.text, str)  # both paths decode through generate
