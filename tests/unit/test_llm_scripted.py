"""The scripted backend: every answering rule, call recording, logprobs, spec loading."""

import pytest

from cir.errors import BackendError, ConfigError
from cir.llm import ChatMessage, ChatRequest, LLMBackend, ScriptedLLM, load_backend
from cir.resources import Resources


def ask(llm, *prompts, **sampling):
    return llm.generate([ChatRequest.from_prompt(p, **sampling) for p in prompts])


def test_responses_in_order_then_cycle():
    llm = ScriptedLLM(["a", "b", "c"])
    assert [g.text for g in ask(llm, "1", "2", "3", "4")] == ["a", "b", "c", "a"]
    assert len(llm.calls) == 4
    assert llm.batch_sizes == [4]


def test_responses_exhausted_raises_when_asked():
    llm = ScriptedLLM(["a"], when_exhausted="error")
    assert ask(llm, "x")[0].text == "a"
    with pytest.raises(BackendError, match="used up its 1 scripted"):
        ask(llm, "y")


def test_n_samples_draw_successive_responses():
    llm = ScriptedLLM([f"caption {i}" for i in range(15)])
    [gen] = ask(llm, "describe", n=15, temperature=1.0, top_p=0.9)
    assert gen.texts == [f"caption {i}" for i in range(15)]


def test_by_substring_first_match_wins_and_lists_give_samples():
    llm = ScriptedLLM(by_substring={"red": "a red dress", "dress": ["d1", "d2"]}, default="?")
    gens = ask(llm, "make the dress red", "a dress", "nothing", n=3)
    assert gens[0].texts == ["a red dress"] * 3
    assert gens[1].texts == ["d1", "d2", "d1"]
    assert gens[2].texts == ["?"] * 3


def test_substring_looks_at_every_message():
    llm = ScriptedLLM(by_substring={"SYSTEM-MARK": "seen"})
    req = ChatRequest.from_prompt("hello", system="SYSTEM-MARK rules")
    assert llm.generate([req])[0].text == "seen"


def test_callable_and_echo():
    llm = ScriptedLLM(fn=lambda req: req.prompt_text.upper())
    assert ask(llm, "abc")[0].text == "ABC"
    echo = ScriptedLLM(echo=True)
    req = ChatRequest(
        (ChatMessage("system", "sys"), ChatMessage("user", "first"), ChatMessage("user", "last"))
    )
    assert echo.generate([req])[0].text == "last"


def test_no_rule_applies_names_the_prompt():
    llm = ScriptedLLM(by_substring={"red": "x"})
    with pytest.raises(BackendError, match="no answer for the prompt 'blue'"):
        ask(llm, "blue")


def test_needs_something_to_answer_with():
    with pytest.raises(ConfigError, match="needs something to answer"):
        ScriptedLLM()
    with pytest.raises(ConfigError, match="list of strings"):
        ScriptedLLM("abc")


def test_logprobs_only_when_asked_and_trimmed_to_k():
    llm = ScriptedLLM(["yes it is"], logprobs={"yes": -0.1, "no": -2.5, "maybe": -4.0})
    assert ask(llm, "q")[0].first_token_logprobs is None
    [gen] = ask(llm, "q", logprobs=2)
    assert gen.first_token_logprobs == [{"yes": -0.1, "no": -2.5}]
    plain = ScriptedLLM(["no, never"])
    assert ask(plain, "q", logprobs=5)[0].first_token_logprobs == [{"no,": 0.0}]


def test_token_counts_and_reset():
    llm = ScriptedLLM(["one two three"])
    [gen] = ask(llm, "four words in prompt", n=2)
    assert (gen.prompt_tokens, gen.completion_tokens) == (4, 6)
    llm.reset()
    assert llm.calls == [] and ask(llm, "x")[0].text == "one two three"


def test_rejects_non_requests():
    with pytest.raises(TypeError, match="item 0 is str, not a ChatRequest"):
        ScriptedLLM(["a"]).generate(["hello"])


def test_load_backend_scripted_is_shared_per_spec():
    res = Resources()
    spec = {"backend": "scripted", "responses": ["a", "b"], "name": "t"}
    llm = load_backend(spec, resources=res)
    assert isinstance(llm, LLMBackend)
    assert llm.identity == "scripted:t"
    assert load_backend(dict(reversed(spec.items())), resources=res) is llm
    assert load_backend({**spec, "name": "u"}, resources=res) is not llm
    assert [g.text for g in ask(llm, "1", "2", "3")] == ["a", "b", "a"]


def test_scripted_spec_options_are_validated():
    with pytest.raises(ConfigError, match="when_exhausted"):
        load_backend({"backend": "scripted", "responses": ["a"], "when_exhausted": "stop"})
    with pytest.raises(ConfigError, match="parameter 'responses' must be"):
        load_backend({"backend": "scripted", "responses": "a"})
