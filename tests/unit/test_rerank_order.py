"""Reading orderings from model answers and applying them to rankings."""

from __future__ import annotations

import pytest

from cir.rerank.order import ParsedOrder, apply_order, movements, order_by_scores, parse_order
from cir.types import Ranking


@pytest.mark.parametrize(
    ("answer", "order"),
    [
        ('{"ranking": [3, 1, 2]}', (2, 0, 1)),
        ("[2, 3, 1]", (1, 2, 0)),
        ('Sure.\n```json\n{"ranking": [2, 1, 3]}\n```\nDone.', (1, 0, 2)),
        ('```\n{"order": ["Image 3", "Image 2", "Image 1"]}\n```', (2, 1, 0)),
        ('{"final_ranking": "3 > 2 > 1"}', (2, 1, 0)),
        ('{"ranking": [{"label": 2, "why": "red"}, {"label": 1}]}', (1, 0)),
        ("3, 1, 2", (2, 0, 1)),
        ("3 > 1 > 2", (2, 0, 1)),
        ("#2 #3 #1.", (1, 2, 0)),
        ('{"ranking": [2.0, 1.0]}', (1, 0)),
        ('{"Ranking": ["[3]", "[1]"]}', (2, 0)),
        ('{"answer": {"ranking": [1, 3]}}', (0, 2)),
    ],
)
def test_answer_shapes(answer, order):
    parsed = parse_order(answer, 3)
    assert parsed is not None and parsed.order == order


def test_chain_of_thought_labels_do_not_count_the_final_json_does():
    answer = (
        "Step 1 - Reference: a dog [1] on grass.\n"
        "Step 3 - Candidates: candidate [2] keeps the dog; candidate [3] does not.\n"
        '{"ranking": [2, 1, 3]}'
    )
    assert parse_order(answer, 3).order == (1, 0, 2)


def test_last_json_object_wins_over_earlier_examples():
    answer = 'The format is {"ranking": [1, 2, 3]}. My answer: {"ranking": [3, 2, 1]}'
    assert parse_order(answer, 3).order == (2, 1, 0)


def test_zero_based_labels_are_recognised():
    parsed = parse_order('{"ranking": [0, 2, 1]}', 3)
    assert parsed.zero_based and parsed.order == (0, 2, 1)


def test_one_based_wins_when_both_zero_and_count_appear():
    parsed = parse_order("[3, 0, 1]", 3)
    assert not parsed.zero_based
    assert parsed.order == (2, 0) and parsed.dropped == (0,)


def test_out_of_range_and_unreadable_labels_are_dropped():
    parsed = parse_order('{"ranking": [7, 2, "best", -1, 1]}', 3)
    assert parsed.order == (1, 0)
    assert parsed.dropped == (7, "best", -1)


def test_duplicates_count_once_at_first_mention():
    parsed = parse_order("[2, 2, 1, 2]", 3)
    assert parsed == ParsedOrder(order=(1, 0), dropped=(), duplicates=2, zero_based=False)
    assert not parsed.complete(3)


@pytest.mark.parametrize(
    "answer",
    ["", None, "I cannot decide.", '{"ranking": []}', '{"ranking": [9, 10]}', "{broken json", "[]"],
)
def test_unusable_answers_give_none(answer):
    assert parse_order(answer, 3) is None


def test_long_digit_strings_do_not_hang():
    assert parse_order("1" * 5000 + "x", 3) is None


def test_apply_order_puts_mentioned_first_then_retrieval_order_then_tail():
    ranking = Ranking(("a", "b", "c", "d", "e", "f"), (0.9, 0.8, 0.7, 0.6, 0.5, 0.4))
    reranked = apply_order(ranking, [3, 1], count=4)
    assert reranked.ids == ("d", "b", "a", "c", "e", "f")
    assert reranked.scores == ranking.scores


def test_apply_order_ignores_duplicates_and_out_of_range_positions():
    ranking = Ranking(("a", "b", "c"), (3.0, 2.0, 1.0))
    assert apply_order(ranking, [2, 2, 5, -1, 0], count=3).ids == ("c", "a", "b")


def test_apply_order_with_count_beyond_ranking():
    ranking = Ranking(("a", "b"), (2.0, 1.0))
    assert apply_order(ranking, [1], count=10).ids == ("b", "a")


def test_order_by_scores_breaks_ties_by_retrieval_position():
    assert order_by_scores([0.2, 0.9, 0.2, 0.9, 0.5]) == [1, 3, 4, 0, 2]


def test_unscored_positions_stay_in_place():
    assert order_by_scores([None, 0.1, 0.9, None, 0.5]) == [0, 2, 4, 3, 1]
    assert order_by_scores([None, None]) == [0, 1]


def test_movements_report_every_top_candidate():
    before = Ranking(("a", "b", "c", "d"), (4.0, 3.0, 2.0, 1.0))
    after = apply_order(before, [2], count=3)
    assert movements(before, after, 3) == [
        {"id": "a", "from": 1, "to": 2},
        {"id": "b", "from": 2, "to": 3},
        {"id": "c", "from": 3, "to": 1},
    ]
