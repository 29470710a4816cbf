"""How each benchmark is scored: what counts as correct, how candidates are normalised and
tokenised for diversity, and what counts as syntactically valid (``codefusion.syntax``, the
check syntax-aware ranking uses too)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from codefusion.cfrules import normal_form
from codefusion.data import Example
from codefusion.syntax import is_valid
from eval.metrics import bash as bash_m
from eval.metrics import cf as cf_m
from eval.metrics import python as py_m


@dataclass(frozen=True)
class Scoring:
    """How one benchmark is scored."""

    name: str
    metric: str  # the metric variant, as printed beside every number
    correct: Callable[[str, Example], tuple[bool, str]]  # (correct, decided_by)
    normalise: Callable[[str], Hashable]  # semantic normal form for unique@k
    tokenize: Callable[[str], list[str]]  # code tokens for distinct-4 and edit distance
    is_valid: Callable[[str], bool]


_CF_TOKEN = re.compile(r"\w+|[^\w\s]")


def _python_correct(pred: str, ex: Example) -> tuple[bool, str]:
    decided = "ast" if is_valid(ex.code, "python") else "text"
    return py_m.exact_match(pred, ex.code), decided


SCORING: dict[str, Scoring] = {
    "cf": Scoring(
        "cf",
        "execution match on the item's Data (canonical form when it has no rows)",
        lambda pred, ex: cf_m.exec_match(pred, ex.code, ex.data),
        normal_form,
        _CF_TOKEN.findall,
        functools.partial(is_valid, language="cf"),
    ),
    "bash": Scoring(
        "bash",
        "template match (our bashlex template; string match when bashlex cannot parse)",
        lambda pred, ex: bash_m.template_match(pred, ex.code),
        lambda c: bash_m.template(c) or bash_m.normalise_whitespace(c),
        str.split,
        functools.partial(is_valid, language="bash"),
    ),
    "python": Scoring(
        "python",
        "exact match after normalisation (ast.dump, else whitespace); not CodeBERTScore",
        _python_correct,
        py_m.normalise,
        py_m.conala_tokenize,
        functools.partial(is_valid, language="python"),
    ),
}
