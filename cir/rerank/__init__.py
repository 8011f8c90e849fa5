"""Helpers of the ``rerank`` stage: grid images, reading orderings, yes/no scores."""

from cir.rerank.grid import GridLayout, compose_grid, draw_label
from cir.rerank.order import ParsedOrder, apply_order, movements, order_by_scores, parse_order
from cir.rerank.yesno import parse_yes_no, yes_probability

__all__ = [
    "GridLayout",
    "ParsedOrder",
    "apply_order",
    "compose_grid",
    "draw_label",
    "movements",
    "order_by_scores",
    "parse_order",
    "parse_yes_no",
    "yes_probability",
]
