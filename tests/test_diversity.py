"""Tests for the top-k diversity measures (eval/metrics/diversity.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codefusion.scoring.metrics.bash import template
from codefusion.scoring.metrics.diversity import (
    distinct_n,
    levenshtein,
    mean_pairwise_edit_distance,
    unique_at_k,
)
from codefusion.scoring.metrics.python import conala_tokenize, normalise


def ws(text: str) -> list[str]:
    return text.split()


def test_unique_at_k_uses_the_normaliser() -> None:
    cands = ["x=1", "x = 1", "y = 2", "x  =  1  # same", "f("]
    assert unique_at_k(cands, normalise) == 3
    assert unique_at_k(cands, lambda c: c) == 5
    assert unique_at_k([], normalise) == 0
    bash = ["ls -la /tmp", "ls -l -a /var", "ls -al x"]
    assert unique_at_k(bash, lambda c: template(c) or " ".join(c.split())) == 2


def test_distinct_n() -> None:
    # identical candidates: 2 distinct 4-grams out of 2 * 2
    assert distinct_n(["a b c d e", "a b c d e"], ws) == pytest.approx(0.5)
    assert distinct_n(["a b c d e", "v w x y z"], ws) == pytest.approx(1.0)
    # n-grams never cross candidate boundaries
    assert distinct_n(["a b", "c d"], ws, n=4) == 0.0
    assert distinct_n(["a b", "c d"], ws, n=2) == pytest.approx(1.0)
    assert distinct_n(["a a a"], ws, n=1) == pytest.approx(1 / 3)
    assert distinct_n([], ws) == 0.0  # no n-gram: defined as 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], ws, n=0)


def test_distinct_n_with_code_tokens() -> None:
    cands = ["os.path.join(a, b)", "os.path.join(a, c)"]
    value = distinct_n(cands, conala_tokenize, n=4)
    assert 0.5 < value < 1.0


def test_levenshtein() -> None:
    assert levenshtein([], []) == 0
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein(["a", "b"], []) == 2
    assert levenshtein(["a", "b", "c"], ["a", "c"]) == 1


def test_mean_pairwise_edit_distance() -> None:
    assert mean_pairwise_edit_distance([], ws) == 0.0
    assert mean_pairwise_edit_distance(["a b c"], ws) == 0.0
    assert mean_pairwise_edit_distance(["a b", "a b", "a b"], ws) == 0.0
    assert mean_pairwise_edit_distance(["a b", "c d"], ws) == pytest.approx(1.0)
    # pairs: (a b c, a b d) = 1/3, (a b c, a b c) = 0, (a b d, a b c) = 1/3
    assert mean_pairwise_edit_distance(["a b c", "a b d", "a b c"], ws) == pytest.approx(2 / 9)
    assert mean_pairwise_edit_distance(["", ""], ws) == 0.0
    assert mean_pairwise_edit_distance(["", "a"], ws) == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="ab c", max_size=12), max_size=5))
def test_diversity_ranges(cands: list[str]) -> None:
    d = mean_pairwise_edit_distance(cands, ws)
    assert 0.0 <= d <= 1.0
    assert d == pytest.approx(mean_pairwise_edit_distance(list(reversed(cands)), ws))
    assert 0.0 <= distinct_n(cands, ws, n=2) <= 1.0
    assert unique_at_k(cands, lambda c: c) <= len(cands)
