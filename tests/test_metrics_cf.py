"""Tests of CF execution match (eval.metrics.cf), on hand-made tables and on the real data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codefusion.syntax import is_valid
from eval.metrics.cf import exec_match

TABLE = [
    ["Product", "Sold", "Delivery"],
    ["P1", 5, "Worldwide"],
    ["P2", 14, "USA"],
    ["P3", 9, "usa"],
    ["P4", 2, ""],
]
NO_ROWS = [["Index", "Value", "Count"]]


def test_same_cells_from_different_text_is_correct_by_execution():
    assert exec_match("GreaterThan(c[1], 8)", "GreaterThanEqual(c[1], 9)", TABLE) == (
        True,
        "execution",
    )
    assert exec_match("Top(c[1], 2)", "GreaterThan(c[1], 5)", TABLE) == (True, "execution")
    pred = "OR(TextEquals(c[2], 'USA'), Blanks(c[2]))"
    assert exec_match(pred, "NOT(TextContains(c[2], 'world'))", TABLE) == (True, "execution")


def test_different_cells_are_wrong():
    assert exec_match("GreaterThan(c[1], 9)", "GreaterThanEqual(c[1], 9)", TABLE) == (
        False,
        "execution",
    )
    # same rows, another column: the highlighted cells differ
    assert exec_match("Duplicates(c[2])", "Duplicates(c[1])", TABLE)[0] is False


def test_unparseable_or_failing_prediction_is_wrong():
    assert exec_match("GreaterThan(c[1], 9", "GreaterThan(c[1], 9)", TABLE) == (
        False,
        "execution",
    )
    assert exec_match("GreaterThan(c[1], abc)", "GreaterThan(c[1], 9)", TABLE) == (
        False,
        "execution",
    )
    assert exec_match("", "Blanks()", NO_ROWS) == (False, "canonical")


def test_no_rows_falls_back_to_canonical_form():
    assert exec_match("Duplicates()", "Duplicate()", NO_ROWS) == (True, "canonical")
    assert exec_match("top(10%)", "TopPercent(10)", NO_ROWS) == (True, "canonical")
    assert exec_match("OR(Equals(2), Equals(1))", "OR(Equals(1), Equals(2))", NO_ROWS)[0]
    assert exec_match("top(10)", "top(10%)", NO_ROWS) == (False, "canonical")
    assert exec_match("Blanks()", "Blanks()", [])[1] == "canonical"


def test_gold_that_does_not_execute_falls_back_to_canonical_form():
    data = [["Index", "Value"], [0, "5 days"], [1, "14 days"]]
    assert exec_match("GreaterThan(13 days)", "GreaterThan(13 Days)", data) == (True, "canonical")
    assert exec_match("GreaterThan(13)", "GreaterThan(13 Days)", data) == (False, "canonical")


def test_gold_that_does_not_parse_is_matched_only_by_its_own_text():
    assert exec_match("", "", NO_ROWS) == (True, "canonical")
    assert exec_match(" $A2=$A3 ", "$A2=$A3", TABLE) == (True, "canonical")
    assert exec_match("Duplicates(c[0])", "$A2=$A3", TABLE) == (False, "canonical")


def test_validity_is_the_parser_s():
    assert is_valid("Between(c[2], 3000, 4000)", "cf")
    assert not is_valid("SUMPRODUCT(($D4<=$E$4:$E$8)*($E4>=$D$4:$D$8))>1", "cf")


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    pred=st.one_of(st.text(max_size=40), st.sampled_from(["Blanks(c[1])", "top(c[1], 2)"])),
    gold=st.sampled_from(["GreaterThan(c[1], 8)", "Duplicates()", "--", "GreaterThan(x)"]),
    data=st.sampled_from([TABLE, NO_ROWS, [], [["a"], ["x", 1, None]]]),
)
def test_fuzz_exec_match_never_raises(pred, gold, data):
    correct, how = exec_match(pred, gold, data)
    assert isinstance(correct, bool) and how in ("execution", "canonical")


# ------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def cf_bench(real_data_dir: Path) -> dict:
    return json.loads((real_data_dir / "benchmarks" / "CFRuleBenchmarks.json").read_text())


def test_gold_vs_gold_test_split_is_perfect(cf_bench, capsys):
    test = cf_bench["test"]
    assert len(test) == 178
    results = [exec_match(r["Code"], r["Code"], r["Data"]) for r in test]
    assert sum(ok for ok, _ in results) == 178
    by_execution = sum(how == "execution" for _, how in results)
    with capsys.disabled():
        print(f"\nCF test items decided by execution: {by_execution}/178 (spec: 116)")
    assert 106 <= by_execution <= 126


def test_gold_vs_gold_train_split_is_perfect(cf_bench):
    train = cf_bench["train"]
    assert sum(exec_match(r["Code"], r["Code"], r["Data"])[0] for r in train) == len(train)


def test_random_other_gold_scores_near_zero(cf_bench, capsys):
    test = cf_bench["test"]
    rng = random.Random(0)
    score = 0
    for i, item in enumerate(test):
        j = rng.randrange(len(test) - 1)
        other = test[j + 1 if j >= i else j]
        score += exec_match(other["Code"], item["Code"], item["Data"])[0]
    with capsys.disabled():
        print(f"\nCF random other gold: {score}/178 (spec: about 3)")
    assert score <= 15


def test_test_labels_are_placeholders(cf_bench):
    # execution match must never read them: they carry no information on the test split
    assert all(r["Labels"] == [0] for r in cf_bench["test"])
