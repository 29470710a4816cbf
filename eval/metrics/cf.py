"""Execution match for Excel conditional-formatting (CF) rules.

A predicted rule is correct when, run by the project's interpreter (:mod:`eval.metrics.cf_interpreter`)
on the item's ``Data``, it highlights exactly the cells the gold rule highlights. When there is
nothing to run on (``Data`` has a header but no rows) or the gold rule does not execute, the
canonical forms are compared instead. ``Labels`` are never used: on the test split they are
placeholders (``[0]``).
"""

from __future__ import annotations

from typing import Any

from codefusion.cfrules import CFError, canonical, parse
from eval.metrics.cf_interpreter import execute

__all__ = ["exec_match"]

EXECUTION = "execution"
CANONICAL = "canonical"


def _squash(text: str) -> str:
    return " ".join(text.split())


def exec_match(pred: str, gold: str, data: list[list[Any]] | None) -> tuple[bool, str]:
    """Whether ``pred`` matches ``gold`` on ``data`` (header row first), and how it was
    decided: ``"execution"`` (highlighted cell sets compared) or ``"canonical"`` (canonical
    forms compared). A prediction that does not parse or fails to execute is wrong."""
    try:
        gold_rule = parse(gold)
    except CFError:
        # A few gold codes are not rules at all (test 730 "--", 740 "", 796 SUMPRODUCT(...),
        # 828 "$A2=$A3"; train 469/517/559 garbled script). The spec says gold-vs-gold scores
        # 178/178, so such a gold is matched only by the same text, whitespace aside.
        return isinstance(pred, str) and _squash(pred) == _squash(gold), CANONICAL
    if data and len(data) > 1:
        try:
            gold_cells = execute(gold_rule, data)
        except CFError:
            gold_cells = None
        if gold_cells is not None:
            try:
                return execute(pred, data) == gold_cells, EXECUTION
            except CFError:
                return False, EXECUTION
    try:
        return canonical(pred) == canonical(gold), CANONICAL
    except CFError:
        return False, CANONICAL
