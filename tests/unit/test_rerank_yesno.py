"""P(yes) from first-token log-probabilities and from answer text."""

from __future__ import annotations

import math

import pytest

from cir.rerank.yesno import normalise_token, parse_yes_no, yes_probability


@pytest.mark.parametrize(
    ("token", "word"),
    [("Yes", "yes"), (" yes", "yes"), ("ĠYes", "yes"), ("▁No", "no"), ("No.", "no"), ("**", "")],
)
def test_token_spellings(token, word):
    assert normalise_token(token) == word


def test_yes_share_pools_spellings():
    logprobs = {
        "Yes": math.log(0.5),
        " yes": math.log(0.1),
        "No": math.log(0.2),
        "The": math.log(0.1),
    }
    assert yes_probability(logprobs) == pytest.approx(0.6 / 0.8)


def test_missing_side_is_bounded_by_least_likely_listed_token():
    logprobs = {"Yes": math.log(0.7), "Sure": math.log(0.2), "I": math.log(0.05)}
    assert yes_probability(logprobs) == pytest.approx(0.7 / 0.75)
    only_no = {"No": math.log(0.9), "Maybe": math.log(0.02)}
    assert yes_probability(only_no) == pytest.approx(0.02 / 0.92)


@pytest.mark.parametrize("logprobs", [None, {}, {"The": -0.1, "A": -2.0}])
def test_no_yes_or_no_token_gives_none(logprobs):
    assert yes_probability(logprobs) is None


def test_score_is_monotone_in_yes_logprob():
    scores = [yes_probability({"Yes": lp, "No": -1.0}) for lp in (-3.0, -2.0, -1.0, -0.5)]
    assert scores == sorted(scores) and scores[2] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Yes", 1.0),
        ("yes.", 1.0),
        ("**Yes**, it matches.", 1.0),
        ("No", 0.0),
        (" no - the colour is wrong", 0.0),
        ('{"answer": "yes"}', 1.0),
        ('{"answer": false}', 0.0),
        ("True", 1.0),
        ("Maybe", None),
        ("", None),
        (None, None),
        ("Not sure", None),
    ],
)
def test_parse_yes_no(text, value):
    assert parse_yes_no(text) == value
