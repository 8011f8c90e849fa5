"""Batched prompted generation with the scripted LLM: cache, parsers, every fallback policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cir.cache import ContentCache
from cir.errors import ConfigError, DataError
from cir.generation import AnswerParseError, Ask, Generator, policy_override, reads_logprobs
from cir.llm import Sampling, ScriptedLLM
from cir.prompts import FallbackPolicy, ParseError, load_prompt, parse_prompt_text
from cir.types import StageRecord

GENERAL = load_prompt("recompose/general")


def _asks(mods: list[str], records: list[StageRecord] | None = None) -> list[Ask]:
    records = records or [StageRecord("recompose", "recompose") for _ in mods]
    return [
        Ask({"caption": "a dog on grass", "modification": m}, fallback=m, record=r)
        for m, r in zip(mods, records, strict=True)
    ]


def _modification(request) -> str:
    return request.messages[-1].content.split("Request: ")[-1].split("\n")[0]


def _answer_good(request) -> str:
    return f"Target Description: {_modification(request)} (done)"


def test_one_batch_for_all_items_and_chunks(tmp_path: Path) -> None:
    llm = ScriptedLLM(fn=_answer_good)
    answers = Generator(llm, GENERAL, stage="recompose").run(_asks(["a", "b", "c"]))
    assert [a.value for a in answers] == ["a (done)", "b (done)", "c (done)"]
    assert llm.batch_sizes == [3]
    assert answers[0].texts == ["Target Description: a (done)"]
    chunked = ScriptedLLM(fn=_answer_good)
    Generator(chunked, GENERAL, stage="recompose", chunk_size=2).run(_asks(list("abcde")))
    assert chunked.batch_sizes == [2, 2, 1]


def test_second_run_is_served_from_the_cache(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    llm = ScriptedLLM(fn=_answer_good)
    gen = Generator(llm, GENERAL, stage="recompose", cache=cache)
    first = gen.run(_asks(["a", "b"]))
    records = [StageRecord("recompose", "recompose") for _ in range(2)]
    second = gen.run(_asks(["a", "b"], records))
    assert len(llm.calls) == 2  # nothing new was asked
    assert [a.value for a in second] == [a.value for a in first]
    assert all(a.cached for a in second) and not any(a.cached for a in first)
    assert [(r.cache_hits, r.cache_misses) for r in records] == [(1, 0), (1, 0)]


def test_cache_key_covers_model_prompt_sampling_and_inputs(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    llm = ScriptedLLM(fn=_answer_good)
    Generator(llm, GENERAL, stage="recompose", cache=cache).run(_asks(["a"]))
    variants = [
        Generator(
            ScriptedLLM(fn=_answer_good, name="other"), GENERAL, stage="recompose", cache=cache
        ),
        Generator(llm, load_prompt("recompose/fashion"), stage="recompose", cache=cache),
        Generator(llm, GENERAL, stage="recompose", cache=cache, sampling=Sampling(seed=1)),
        Generator(llm, GENERAL, stage="recompose", cache=cache, sampling=Sampling(max_tokens=9)),
        Generator(llm, GENERAL, stage="caption", cache=cache),
    ]
    for gen in variants:
        assert not gen.run(_asks(["a"]))[0].cached
    assert not Generator(llm, GENERAL, stage="recompose", cache=cache).run(_asks(["b"]))[0].cached
    assert Generator(llm, GENERAL, stage="recompose", cache=cache).run(_asks(["a"]))[0].cached


def test_images_are_fingerprinted_and_read_only_on_a_miss(tmp_path: Path) -> None:
    prompt = load_prompt("caption/plain")
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (8, 8), "red").save(red)
    Image.new("RGB", (8, 8), "blue").save(blue)
    llm = ScriptedLLM(fn=lambda r: f"{r.images[0].getpixel((0, 0))}")
    gen = Generator(llm, prompt, stage="caption", cache=ContentCache(tmp_path / "c"))
    answers = gen.run([Ask({}, (red,)), Ask({}, (blue,))])
    assert [a.value for a in answers] == ["(255, 0, 0)", "(0, 0, 255)"]
    red.write_bytes(b"not an image any more")  # a cached answer never decodes the file...
    with pytest.raises(DataError, match="not an image"):  # ...a changed file is a new key
        gen.run([Ask({}, (red,))])
    Image.new("RGB", (8, 8), "blue").save(red)
    assert gen.run([Ask({}, (red,))])[0].cached  # same bytes as blue.png: same content
    assert len(llm.calls) == 2


def test_strict_variables_are_checked_before_any_model_call() -> None:
    llm = ScriptedLLM(fn=_answer_good)
    with pytest.raises(ConfigError, match="missing variable"):
        Generator(llm, GENERAL, stage="recompose").run([Ask({"caption": "x"})])
    assert llm.calls == []


def test_policy_fallback_counts() -> None:
    llm = ScriptedLLM(
        fn=lambda r: "I cannot help" if "bad" in _modification(r) else _answer_good(r)
    )
    gen = Generator(llm, GENERAL, stage="recompose", fallback=FallbackPolicy("fallback"))
    records = [StageRecord("recompose", "recompose") for _ in range(2)]
    answers = gen.run(_asks(["bad edit", "good"], records))
    assert answers[0].value == "bad edit" and answers[0].fallbacks == 1
    assert answers[0].texts == ["I cannot help"]  # raw text kept
    assert answers[1].value == "good (done)" and answers[1].fallbacks == 0
    assert [r.fallbacks for r in records] == [1, 0]
    assert "no line labelled" in records[0].notes["parse_errors"][0]
    assert len(llm.calls) == 2


def test_policy_retry_succeeds_with_a_new_seed_and_temperature() -> None:
    def flaky(request) -> str:
        return _answer_good(request) if request.seed == 1 else "rambling"

    llm = ScriptedLLM(fn=flaky)
    gen = Generator(llm, GENERAL, stage="recompose", fallback=FallbackPolicy("retry", 2))
    (record,) = records = [StageRecord("recompose", "recompose")]
    (answer,) = gen.run(_asks(["x"], records))
    assert answer.value == "x (done)" and answer.retries == 1 and answer.fallbacks == 0
    assert [(c.seed, c.temperature) for c in llm.calls] == [(0, 0.0), (1, 0.7)]
    assert record.notes["retries"] == 1 and record.fallbacks == 0


def test_policy_retry_then_fallback_and_retry_then_raise() -> None:
    llm = ScriptedLLM(default="never parses")
    gen = Generator(llm, GENERAL, stage="recompose", fallback=FallbackPolicy("retry", 3))
    records = [StageRecord("recompose", "recompose")]
    (answer,) = gen.run(_asks(["x"], records))
    assert answer.value == "x" and answer.retries == 3 and len(llm.calls) == 4
    assert records[0].fallbacks == 1 and len(records[0].notes["parse_errors"]) == 4
    strict = Generator(
        llm, GENERAL, stage="recompose", fallback=FallbackPolicy("retry", 1, then="raise")
    )
    with pytest.raises(AnswerParseError, match="never parses"):
        strict.run(_asks(["x"]))


def test_policy_raise_keeps_the_other_answers_in_the_cache(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    llm = ScriptedLLM(fn=lambda r: "junk" if "bad" in _modification(r) else _answer_good(r))
    gen = Generator(llm, GENERAL, stage="recompose", cache=cache, fallback=FallbackPolicy("raise"))
    with pytest.raises(AnswerParseError, match=r"recompose/general\.v1.*'junk'"):
        gen.run(_asks(["good", "bad"]))
    assert len(cache) == 2  # both raw answers were stored before parsing
    assert gen.run(_asks(["good"]))[0].cached


def test_n_samples_retry_only_the_failed_ones() -> None:
    def samples(request) -> list[str]:
        if request.seed == 0:
            return ["Target Description: one", "oops", "Target Description: three"]
        return ["Target Description: fixed"] * request.n

    llm = ScriptedLLM(fn=samples)
    gen = Generator(
        llm,
        GENERAL,
        stage="recompose",
        sampling=Sampling(temperature=1.0),
        n=3,
        fallback=FallbackPolicy("retry", 1),
    )
    (answer,) = gen.run(_asks(["x"]))
    assert answer.values == ["one", "fixed", "three"]
    assert [c.n for c in llm.calls] == [3, 1]
    assert llm.calls[1].temperature == 1.0  # sampled requests keep their temperature


def test_parsers_from_the_caller_and_per_item() -> None:
    llm = ScriptedLLM(default="ANSWER=42")

    def number(text: str) -> int:
        if "=" not in text:
            raise ParseError("no '='")
        return int(text.split("=")[1])

    gen = Generator(llm, GENERAL, stage="recompose", parser=number)
    plain, custom = _asks(["a", "b"])
    custom.parser = lambda text: text.lower()
    assert [a.value for a in gen.run([plain, custom])] == [42, "answer=42"]


def test_logprobs_are_carried() -> None:
    llm = ScriptedLLM(default="yes", logprobs={"yes": -0.1, "no": -2.5})
    prompt = parse_prompt_text("---\nvariables: [q]\nparser: text\n---\n{{q}}")
    gen = Generator(llm, prompt, stage="rerank", sampling=Sampling(max_tokens=1), logprobs=2)
    (answer,) = gen.run([Ask({"q": "is it red?"})])
    assert answer.value == "yes" and answer.logprobs == [{"yes": -0.1, "no": -2.5}]


def test_parsers_reading_logprobs_use_the_same_retry_policy() -> None:
    def answers(request) -> list[str]:  # the first attempt says neither, the retry says yes
        return ["hmm"] if request.seed == 0 else ["yes"]

    seen = []

    @reads_logprobs
    def verdict(text: str, logprobs: dict | None) -> str:
        seen.append(logprobs)
        if text not in ("yes", "no"):
            raise ParseError("neither yes nor no")
        return text

    llm = ScriptedLLM(fn=answers, logprobs={"hmm": -0.1})
    prompt = parse_prompt_text("---\nvariables: [q]\nparser: text\n---\n{{q}}")
    gen = Generator(llm, prompt, stage="rerank", logprobs=1, fallback=FallbackPolicy("retry", 1))
    record = StageRecord("rerank", "rerank")
    (answer,) = gen.run([Ask({"q": "red?"}, parser=verdict, record=record)])
    assert answer.value == "yes" and answer.retries == 1 and record.fallbacks == 0
    assert seen[0] == {"hmm": -0.1}  # the parser saw the first token's log-probabilities


def test_policy_override_from_stage_params() -> None:
    assert policy_override(GENERAL, None, None) is None
    assert policy_override(GENERAL, "raise", None) == FallbackPolicy("raise")
    assert policy_override(GENERAL, None, 3) == FallbackPolicy("retry", 3)
    assert policy_override(GENERAL, None, 0) == FallbackPolicy("fallback")
    with pytest.raises(ConfigError, match="needs fallback policy 'retry'"):
        policy_override(GENERAL, "raise", 2)
    with pytest.raises(ConfigError, match="retries >= 1"):
        policy_override(GENERAL, "retry", 0)
