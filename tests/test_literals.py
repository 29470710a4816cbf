"""Literals and copying (codefusion/literals.py) and the literal tokenizer they measure: a
literal of the prompt is the same token ids in the code only under the ``literal`` scheme."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from codefusion.data import Example
from codefusion.literals import (
    bash_literals,
    cf_literals,
    cf_shape,
    copy_diagnostics,
    identical_ids,
    in_prompt,
    literal_report,
    python_literals,
)
from codefusion.tokenizer import CodeTokenizer, train_bpe

TEXTS = [
    "Highlight cells greater than 85 in column B",
    "GreaterThan(85)",
    "TextContains(Bull)",
    "cells that contain Bull",
    "LessThan(2981)",
    "values below 2981",
] * 30


@pytest.fixture(scope="module", params=["literal", "bytelevel"])
def tok(request) -> CodeTokenizer:
    return CodeTokenizer(train_bpe(TEXTS, vocab_size=600, min_frequency=1, scheme=request.param))


def test_literals_of_each_language():
    assert cf_literals('OR(GreaterThan(c[2], 85), TextContains("Bull"))') == ["Bull", "85"]
    assert cf_literals("not a rule (") == []
    assert bash_literals("find . -name '*.txt' | sort -u foo") == [".", "*.txt", "foo"]
    assert sorted(python_literals("x = open('a.txt').read(3)")) == ["3", "a.txt"]
    assert in_prompt("85", "greater than 85 in B") and not in_prompt("85", "greater than 850")
    assert cf_shape("GreaterThan(c[1], 85)") == cf_shape("GreaterThan(12)")


def test_the_literal_scheme_makes_prompt_literals_the_same_ids(tok):
    same = [
        identical_ids(tok, lit, prompt, code)
        for lit, prompt, code in (
            ("85", "Highlight cells greater than 85 in column B", "GreaterThan(85)"),
            ("2981", "values below 2981", "LessThan(2981)"),
            ("Bull", "cells that contain Bull", "TextContains(Bull)"),
        )
    ]
    if tok.scheme == "literal":
        assert all(same)
    else:  # byte-level BPE fuses the space before a word into its first token
        assert not all(same)


def test_literal_report_counts_numbers_and_text():
    tok = CodeTokenizer(train_bpe(TEXTS, vocab_size=300, min_frequency=1, scheme="literal"))
    exs = [
        Example(0, "greater than 85", "GreaterThan(85)"),
        Example(1, "contains Bull", "TextContains(Bull)"),
        Example(2, "above the average", "AboveAverage()"),  # no literal
    ]
    rep = literal_report(tok, exs, "cf")
    assert rep["numbers"] == {"identical": 1, "in_prompt": 1, "share": 100.0}
    assert rep["text"]["in_prompt"] == 1 and rep["text"]["share"] == 100.0


def test_copy_diagnostics_rates():
    exs = [Example(0, "greater than 85", "GreaterThan(85)"), Example(1, "blanks", "Blanks()")]
    cands = [
        [NS(code="GreaterThan(85)"), NS(code="GreaterThan(86)"), NS(code="LessThan(85)")],
        [NS(code="Blanks()")],
    ]
    d = copy_diagnostics(exs, cands, "cf")
    # Right shape: GreaterThan(85) and GreaterThan(86); one of the two carries 85.
    assert d["copy_rate"] == 50.0 and d["copy_rate_top1"] == 100.0
    assert d["right_shape_candidates_with_prompt_literals"] == 2
    assert d["right_shape_top1"] == 100.0
    assert d["literal_free_items"] == 1 and d["literal_free_top1"] == 100.0


def test_real_cf_test_golds_meet_the_copy_precondition(real_data_dir):
    """The issue's target on the CF test split: >= 95% of in-prompt numbers and >= 90% of text
    literals are the same ids in prompt and code under the literal tokenizer."""
    from codefusion.data import load_benchmark
    from codefusion.tokenizer import tokenizer_corpus

    corpus = list(tokenizer_corpus(real_data_dir, languages=["cf"]))
    tok = CodeTokenizer(train_bpe(corpus, vocab_size=1000, scheme="literal"))
    rep = literal_report(tok, load_benchmark("cf", "test", real_data_dir)[0], "cf")
    assert rep["numbers"]["share"] >= 95 and rep["text"]["share"] >= 90, rep
