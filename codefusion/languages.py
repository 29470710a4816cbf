"""The three benchmark languages, one entry each: everything that differs between CF rules,
Bash and Python is said here, once, and read from here.

    name      files (benchmark, pre-training snippets)   masking for CPD   validity
    program key (held-out splits)   scoring: metric, correctness, normal form, code tokens

Nothing here executes code: validity parses, CF rules run only in our own interpreter
(:mod:`codefusion.scoring.metrics.cf_interpreter`), Python is compared by its ``ast``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from codefusion import masking, syntax
from codefusion.cfrules import normal_form
from codefusion.errors import UserError
from codefusion.scoring.metrics import bash as bash_m
from codefusion.scoring.metrics import cf as cf_m
from codefusion.scoring.metrics import python as py_m

Correct = Callable[[str, str, Any], tuple[bool, str]]  # (pred, gold, item data) -> (ok, how)


@dataclass(frozen=True)
class Figure:
    """A further top-k figure of a language beside its main one (metrics.json's ``figures``)."""

    metric: str  # what it measures, as printed beside every number
    correct: Correct


@dataclass(frozen=True)
class Language:
    name: str
    benchmark_file: str  # <data>/benchmarks/<file>
    snippet_file: str | None  # <data>/pretraining/<file>; None: built from the stdlib (Python)
    scanner: masking.Scanner  # maskable units of a snippet for code CPD (codefusion/masking.py)
    parses: Callable[[str], bool]  # syntactic validity (codefusion/syntax.py)
    # "The same program", for held-out splits: a held-out program is never trained on under
    # another prompt.
    program_key: Callable[[str], Hashable]
    train_gold_must_parse: bool  # a train row whose gold does not parse is skipped
    metric: str  # the metric variant, as printed beside every number
    correct: Correct
    normalise: Callable[[str], Hashable]  # semantic normal form: unique@k
    code_tokens: Callable[[str], list[str]]  # tokens for distinct-4 and edit distance
    figures: dict[str, Figure] = field(default_factory=dict)
    # The gold is satisfied by a degenerate answer (CF: it highlights no cell, so any rule that
    # highlights nothing matches it under execution): such items are counted apart.
    degenerate_gold: Callable[[str, Any], bool] | None = None


def _squash(code: str) -> str:
    return " ".join(code.split())


def _python_correct(pred: str, gold: str, _data: Any) -> tuple[bool, str]:
    return py_m.exact_match(pred, gold), "ast" if syntax.python_parses(gold) else "text"


_CF_TOKEN = re.compile(r"\w+|[^\w\s]")

LANGUAGES: dict[str, Language] = {
    "cf": Language(
        name="cf",
        benchmark_file="CFRuleBenchmarks.json",
        snippet_file="ConditionalFormattingSnippets.txt",
        scanner=masking.cf_spans,
        parses=syntax.cf_parses,
        program_key=normal_form,  # Duplicate() and Duplicates() are one program
        train_gold_must_parse=True,  # train 469, 517, 559 are garbled script text
        metric="execution match on the item's Data (canonical form when it has no rows)",
        correct=cf_m.exec_match,
        normalise=normal_form,
        code_tokens=_CF_TOKEN.findall,
        figures={
            "selection_applied": Figure(
                "selection-applied execution match: a rule without c[i] applies to the gold's "
                "selection (canonical form without c[i] when the table has no rows)",
                cf_m.selection_match,
            ),
            "strict": Figure(
                "strict match: canonical forms equal with every c[i] removed, no execution",
                cf_m.strict_match,
            ),
        },
        degenerate_gold=cf_m.gold_highlights_nothing,
    ),
    "bash": Language(
        name="bash",
        benchmark_file="BashBenchmarks.json",
        snippet_file="BashSnippets.txt",
        scanner=masking.bash_spans,
        parses=syntax.bash_parses,
        program_key=_squash,
        train_gold_must_parse=False,
        metric="template match (our bashlex template; string match when bashlex cannot parse)",
        correct=lambda pred, gold, _data: bash_m.template_match(pred, gold),
        normalise=lambda c: bash_m.template(c) or bash_m.normalise_whitespace(c),
        code_tokens=str.split,
    ),
    "python": Language(
        name="python",
        benchmark_file="PythonBenchmarks.json",
        snippet_file=None,
        scanner=masking.python_spans,
        parses=syntax.python_parses,
        program_key=_squash,
        train_gold_must_parse=False,
        metric="exact match after normalisation (ast.dump, else whitespace); not CodeBERTScore",
        correct=_python_correct,
        normalise=py_m.normalise,
        code_tokens=py_m.conala_tokenize,
    ),
}
NAMES = tuple(LANGUAGES)


class UnknownLanguage(UserError):
    pass


def language(name: str) -> Language:
    """The entry of ``name``; a one-line error for an unknown one."""
    entry = LANGUAGES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise UnknownLanguage(f"unknown benchmark {name!r}: choose one of {', '.join(NAMES)}")
    return entry


def is_valid(code: str, name: str) -> bool:
    """Whether ``code`` parses in language ``name`` (never raises for any string)."""
    return isinstance(code, str) and language(name).parses(code)


def maskable_spans(code: str, name: str) -> list[tuple[int, int]]:
    """:func:`codefusion.masking.maskable_spans` with language ``name``'s scanner."""
    return masking.maskable_spans(code, language(name).scanner)


def mask_code(
    code: str, name: str, rate: float, rng: random.Random, mask_token: str = masking.MASK_TOKEN
) -> str:
    """:func:`codefusion.masking.mask_code` with language ``name``'s scanner."""
    return masking.mask_code(code, language(name).scanner, rate, rng, mask_token)
