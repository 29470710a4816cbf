"""CF rule figures: execution match, selection-applied execution match, strict match.

All run rules only in the project's interpreter (:mod:`codefusion.scoring.metrics.cf_interpreter`)
and never read ``Labels`` (placeholders on the test split). A gold code that is not a rule
(test 730 ``--``, 736 and 740 empty, 796 ``SUMPRODUCT(...)``, 828 ``$A2=$A3``) is matched only by
the same text, whitespace aside, under every figure: gold-vs-gold is 100% under each.

- :func:`exec_match` (the first figure): the predicted rule, run on the item's ``Data``,
  highlights exactly the gold's cells; rules without ``c[i]`` apply to the table's default
  columns (the Value column, column 0 of a one-column table, else every column). Canonical forms
  are compared when ``Data`` has no rows or the gold does not execute.
- :func:`selection_match` (the figure that stands beside the paper's): as a spreadsheet applies
  a rule to the range the user selected, a candidate's predicates without ``c[i]`` apply to the
  gold's selection, the columns whose cells the gold highlights (its tested columns; the
  default columns for a gold without ``c[i]``); predicates with an explicit ``c[i]`` run as
  written. Without rows, or when the gold does not execute: canonical forms with every ``c[i]``
  removed from both. 114 of 178 test golds name columns that no training rule or snippet has:
  under :func:`exec_match` a model trained on this data cannot write them.
- :func:`strict_match`: the canonical forms, with every ``c[i]`` removed from both, are equal. No
  execution, so no credit for coincidental matches (8 test golds highlight no cell at all: any
  rule that highlights nothing matches them under execution).
"""

from __future__ import annotations

from typing import Any

from codefusion.cfrules import CFError, canonical, parse
from codefusion.scoring.metrics.cf_interpreter import execute, tested_columns

__all__ = ["exec_match", "gold_highlights_nothing", "selection_match", "strict_match"]

EXECUTION = "execution"
CANONICAL = "canonical"


def _squash(text: str) -> str:
    return " ".join(text.split())


def _not_a_rule(pred: Any, gold: str) -> tuple[bool, str]:
    return isinstance(pred, str) and _squash(pred) == _squash(gold), CANONICAL


def _canonical_equal(pred: str, gold_rule: Any, columns: bool) -> bool:
    try:
        return canonical(pred, columns) == canonical(gold_rule, columns)
    except CFError:
        return False


def _gold_cells(gold_rule: Any, data: Any):
    """The gold's highlighted cells, or None when there is nothing to run on or it fails."""
    if not data or len(data) < 2:
        return None
    try:
        return execute(gold_rule, data)
    except CFError:
        return None


def exec_match(pred: str, gold: str, data: list[list[Any]] | None) -> tuple[bool, str]:
    """Whether ``pred`` matches ``gold`` on ``data`` (header row first), and how it was
    decided: ``"execution"`` (highlighted cell sets compared) or ``"canonical"``. A prediction
    that does not parse or fails to execute is wrong."""
    try:
        gold_rule = parse(gold)
    except CFError:
        return _not_a_rule(pred, gold)
    gold_cells = _gold_cells(gold_rule, data)
    if gold_cells is None:
        return _canonical_equal(pred, gold_rule, columns=True), CANONICAL
    try:
        return execute(pred, data) == gold_cells, EXECUTION
    except CFError:
        return False, EXECUTION


def selection_match(pred: str, gold: str, data: list[list[Any]] | None) -> tuple[bool, str]:
    """Selection-applied execution match (module doc)."""
    try:
        gold_rule = parse(gold)
    except CFError:
        return _not_a_rule(pred, gold)
    gold_cells = _gold_cells(gold_rule, data)
    if gold_cells is None:
        return _canonical_equal(pred, gold_rule, columns=False), CANONICAL
    try:
        selection = tested_columns(gold_rule, data)
        return execute(pred, data, defaults=selection) == gold_cells, EXECUTION
    except CFError:
        return False, EXECUTION


def strict_match(pred: str, gold: str, _data: Any = None) -> tuple[bool, str]:
    """Canonical forms equal with every ``c[i]`` removed from both (module doc)."""
    try:
        gold_rule = parse(gold)
    except CFError:
        return _not_a_rule(pred, gold)
    return _canonical_equal(pred, gold_rule, columns=False), CANONICAL


def gold_highlights_nothing(gold: str, data: list[list[Any]] | None) -> bool:
    """The gold runs on rows and highlights no cell: under execution match any rule that also
    highlights nothing is right (a coincidental match)."""
    try:
        cells = _gold_cells(parse(gold), data)
    except CFError:
        return False
    return cells is not None and not cells
