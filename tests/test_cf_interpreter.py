"""Tests of the CF rule interpreter (eval/metrics/cf_interpreter.py) on tiny tables, and fuzz
tests of parsing, canonical form and execution together."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codefusion.cfrules import CFError, Pred, Text, canonical, is_valid, parse
from codefusion.scoring.metrics.cf_interpreter import CFExecError, execute

# ------------------------------------------------------------------------------ tiny tables

# Index/Value table: rules without c[i] apply to the Value column (1).
IV = [
    ["Index", "Value", "Count"],
    [0, "10"],  # 1
    [1, "25", 3],  # 2
    [2, ""],  # 3  blank
    [3, "abc"],  # 4  text
    [4, "1,000"],  # 5  thousands separator
    [5, "$30"],  # 6  currency
    [6, "#N/A"],  # 7  error
    [7, "ABC"],  # 8  duplicate of "abc", case-insensitively
    [8, 25],  # 9  duplicate of "25"
    [9, "50%"],  # 10 0.5
]

NUMS = [["v"], [5], [1], [9], [9], [3], [7], [""], ["x"]]  # one column -> column 0

PEOPLE = [
    ["Name", "Start", "End", "Score", "City"],
    ["Ann", "6/01/2020", "24/01/2020", 70, "New York"],  # 1
    ["bob", "2020-01-30", "2020-01-02", 85, "Boston"],  # 2
    ["Cid", "14/01/2020", "14/01/2020", 85, ""],  # 3
    ["Dee", "1/02/2020", "3/02/2020", "n/a", "new york"],  # 4
]


def rows(rule: str, data: list[list], col: int | None = None) -> list[int]:
    """Highlighted rows of ``rule`` (optionally restricted to one column)."""
    return sorted({r for r, c in execute(rule, data) if col is None or c == col})


# ------------------------------------------------------------------------ comparisons


def test_greater_than_parses_separators_currency_and_percent():
    assert rows("GreaterThan(20)", IV) == [2, 5, 6, 9]
    assert rows("GreaterThan(0.4)", IV) == [1, 2, 5, 6, 9, 10]  # "50%" is 0.5
    assert rows("GreaterThan(c[1], 999)", IV) == [5]


def test_less_than_skips_text_blanks_and_errors():
    assert rows("LessThan(26)", IV) == [1, 2, 9, 10]
    assert rows("LessThan(c[0], 2)", IV) == [1, 2]


def test_greater_than_equal_and_alias():
    assert rows("GreaterThanEqual(25)", IV) == [2, 5, 6, 9]
    assert rows("GreaterThanEquals(25)", IV) == rows("GreaterThanEqual(25)", IV)


def test_less_than_equal():
    assert rows("LessThanEqual(25)", IV) == [1, 2, 9, 10]
    assert rows("LessThanEqual(c[3], 85)", PEOPLE) == [1, 2, 3]


def test_equals_numeric_and_text():
    assert rows("Equals(25)", IV) == [2, 9]
    assert rows("Equals(1000)", IV) == [5]
    assert rows("Equals(abc)", IV) == [4, 8]  # text literal: case-insensitive
    assert rows("Equals(c[4], 'NEW YORK')", PEOPLE) == [1, 4]


def test_not_equals_is_the_complement_of_equals():
    assert rows("NotEquals(25)", IV) == [1, 3, 4, 5, 6, 7, 8, 10]


def test_dates_compare_as_day_numbers_row_by_row():
    assert rows("GreaterThan(c[2], c[1])", PEOPLE) == [1, 4]
    assert rows("LessThan(c[2], c[1])", PEOPLE) == [2]
    assert rows("Equals(c[2], c[1])", PEOPLE) == [3]
    assert rows("GreaterThan(c[1], '2020-01-20')", PEOPLE) == [2, 4]
    assert rows("Between(c[1], '10/01/2020', '2020-01-31')", PEOPLE) == [2, 3]
    # the highlighted cells are the tested column's, not the column compared against
    assert execute("GreaterThan(c[2], c[1])", PEOPLE) == {(1, 2), (4, 2)}


def test_len_is_the_text_length():
    assert rows("GreaterThan(LEN(c[0]), 2)", PEOPLE) == [1, 2, 3, 4]
    assert rows("GreaterThan(LEN(c[4]), 6)", PEOPLE) == [1, 4]
    assert rows("Equals(LEN(c[4]), 0)", PEOPLE) == [3]


def test_ordering_with_a_text_bound_is_an_execution_error():
    with pytest.raises(CFExecError):
        execute("GreaterThan(13 Days)", IV)
    assert execute("GreaterThan(13 Days)", [["Index", "Value"]]) == frozenset()


# ----------------------------------------------------------------------------- Between


def test_between_is_inclusive_in_either_order():
    assert rows("Between(10, 25)", IV) == [1, 2, 9]
    assert rows("Between(25, 10)", IV) == [1, 2, 9]
    assert rows("Between(c[3], 85, 70)", PEOPLE) == [1, 2, 3]


# ------------------------------------------------------------------------------ text ops


def test_text_equals_is_case_insensitive_without_trimming():
    data = [["Index", "Value"], [0, "Intestinal"], [1, "Intestinal "], [2, "intestinal"]]
    assert rows("TextEquals(Intestinal)", data) == [1, 3]
    assert rows("TextEquals(c[1], 'INTESTINAL ')", data) == [2]


def test_text_contains_bare_literal_is_the_whole_inner_text():
    data = [["Index", "Value"], [0, "Non-pooled, en"], [1, "Non-pooled"], [2, "pooled, EN x"]]
    assert rows("TextContains(Non-pooled, en)", data) == [1]
    assert rows("TextContains(pooled, en)", data) == [1, 3]
    assert parse("TextEquals(TRAFFIC SIGNALS (Multi-Way))") == Pred(
        "textequals", None, (Text("TRAFFIC SIGNALS (Multi-Way)"),)
    )
    assert parse("TextContains(  )").args == (Text(""),)


def test_whitespace_around_a_bare_literal_is_not_part_of_it():
    data = [["Index", "Value"], [0, "FB page"], [1, "a FB"], [2, "FBI"], [3, "F B"]]
    assert parse("TextContains( FB)") == parse("TextContains(FB)")
    assert parse("TextEquals( Non-pooled, en  )").args == (Text("Non-pooled, en"),)
    assert rows("TextContains( FB )", data) == rows("TextContains(FB)", data) == [1, 2, 3]
    assert canonical("TextContains( FB)") == canonical("TextContains(FB)")
    assert canonical("NOT(TextStartsWith( FB))") == canonical("NOT(TextStartsWith(FB))")
    # inner spaces stay: "F B" is not "FB"
    assert canonical("TextContains( F B)") != canonical("TextContains(FB)")
    assert rows("TextContains( F B )", data) == [4]


def test_a_quoted_literal_keeps_its_spaces():
    data = [["Index", "Value"], [0, "FB page"], [1, "a FB"], [2, "FBI"]]
    assert parse("TextContains(c[1], ' FB')").args == (Text(" FB"),)
    assert canonical("TextContains(c[1], ' FB')") != canonical("TextContains(c[1], 'FB')")
    assert rows("TextContains(c[1], ' FB')", data) == [2]
    assert rows("TextContains(c[1], 'FB')", data) == [1, 2, 3]


def test_text_contains_on_numbers_uses_their_text():
    assert rows("TextContains(0)", IV) == [1, 5, 6, 10]


def test_text_starts_with_and_alias():
    assert rows("TextStartsWith(c[4], 'new')", PEOPLE) == [1, 4]
    assert rows("StartsWith(c[4], 'NEW')", PEOPLE) == [1, 4]


def test_text_ends_with_and_alias():
    assert rows("TextEndsWith(c[4], 'YORK')", PEOPLE) == [1, 4]
    assert rows("EndsWith(c[0], 'b')", PEOPLE) == [2]


# --------------------------------------------------------------- blanks, errors, duplicates


def test_blanks():
    assert rows("Blanks()", IV) == [3]
    assert rows("Blanks(c[4])", PEOPLE) == [3]
    assert rows("Blanks(c[2])", IV) == [1, 3, 4, 5, 6, 7, 8, 9, 10]  # short rows read as blank


def test_errors():
    data = [["v"], ["#N/A"], ["#DIV/0!"], ["#ERR"], ["#VALUE!"], ["#hashtag"], [3], [""]]
    assert rows("Errors()", data) == [1, 2, 3, 4]
    assert rows("Errors()", IV) == [7]


def test_duplicate_and_alias():
    assert rows("Duplicate()", IV) == [2, 4, 8, 9]  # abc/ABC and "25"/25; blanks never count
    assert rows("Duplicates(c[0])", PEOPLE) == []
    assert rows("Duplicates()", NUMS) == [3, 4]


# ------------------------------------------------------------------------- ranks, averages


def test_top_and_bottom_count_with_ties():
    assert rows("top(1)", NUMS) == [3, 4]
    assert rows("Top(c[0], 2)", NUMS) == [3, 4]  # threshold at the 2nd largest: a tie
    assert rows("top(3)", NUMS) == [3, 4, 6]
    assert rows("bottom(2)", NUMS) == [2, 5]
    assert rows("Bottom(c[0])", NUMS) == [2]  # no k: the single extreme value
    assert rows("top(100)", NUMS) == [1, 2, 3, 4, 5, 6]


def test_top_and_bottom_percent():
    # 6 numbers: 50% -> 3 values, 10% -> max(1, floor(0.6)) = 1 value
    assert rows("top(50%)", NUMS) == [3, 4, 6]
    assert rows("TopPercent(c[0], 10)", NUMS) == [3, 4]
    assert rows("bottom(50%)", NUMS) == [1, 2, 5]
    assert rows("BottomPercent(10)", NUMS) == [2]


def test_bad_ranks_are_execution_errors():
    for rule in ("top(0)", "top(2.5)", "TopPercent(0)", "BottomPercent(101)"):
        with pytest.raises(CFExecError):
            execute(rule, NUMS)


def test_above_and_below_average_are_strict():
    data = [["v"], [1], [2], [3], ["x"], [""]]
    assert rows("AboveAverage()", data) == [3]
    assert rows("BelowAverage()", data) == [1]
    assert rows("aboveAverage()", [["v"], [2], [2]]) == []


# ------------------------------------------------------------------------ visual formats


@pytest.mark.parametrize("name", ["ColorScale", "DataBar", "IconSet"])
def test_visual_formats_mark_every_non_blank_cell(name):
    assert rows(f"{name}()", IV) == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert rows(f"{name}(c[4])", PEOPLE) == [1, 2, 4]


# --------------------------------------------------------------------------- dates by month


def test_last_this_next_month_relative_to_latest_date():
    data = [["d"], ["2022-12-06"], ["2022-11-21"], ["2023-01-02"], ["31/12/2022"], [44000]]
    assert rows("LastMonth(c[0])", data) == [1, 4]
    assert rows("ThisMonth()", data) == [3]
    assert rows("NextMonth()", data) == []


# ------------------------------------------------------------------------------- logic


def test_and_or_not_are_row_wise():
    assert rows("AND(GreaterThanEqual(10), LessThan(31))", IV) == [1, 2, 6, 9]
    assert rows("OR(Equals(10), TextEquals(abc))", IV) == [1, 4, 8]
    assert rows("NOT(Blanks())", IV) == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert rows("Not(Equals(c[3], 85))", PEOPLE) == [1, 4]
    rule = "AND(GreaterThan(c[3], 80), TextEquals(c[4], 'Boston'))"
    assert execute(rule, PEOPLE) == {(2, 3), (2, 4)}


# ------------------------------------------------------------------------ target columns


def test_rules_without_columns_apply_to_value_column_single_column_or_each_column():
    assert {c for _, c in execute("ColorScale()", IV)} == {1}
    assert {c for _, c in execute("ColorScale()", NUMS)} == {0}
    multi = [["a", "b"], [1, "x"], [5, ""]]
    assert execute("ColorScale()", multi) == {(1, 0), (2, 0), (1, 1)}
    assert execute("top(1)", multi) == {(2, 0)}  # ranked per column; b has no numbers


def test_columns_past_the_data_are_blank_but_the_sheet_has_an_end():
    data = [["Student", "Grade"], ["Fox", 88], ["Abbot", 78]]
    assert execute("NOT(Duplicates(c[2]))", data) == {(1, 2), (2, 2)}
    with pytest.raises(CFExecError):
        execute("Blanks(c[16384])", data)


def test_execute_rejects_malformed_data():
    with pytest.raises(CFExecError):
        execute("Blanks()", "not a table")  # type: ignore[arg-type]
    assert execute("Blanks()", []) == frozenset()


# ----------------------------------------------------------------------------------- fuzz

_VOCAB = [
    "AND(", "OR(", "NOT(", "Not(", "GreaterThan(", "LessThanEqual(", "Equals(", "NotEquals(",
    "Between(", "TextContains(", "TextEquals(", "StartsWith(", "Blanks(", "Errors(",
    "Duplicates(", "top(", "Bottom(", "TopPercent(", "AboveAverage(", "ColorScale(",
    "LastMonth(", "LEN(", "c[0]", "c[1]", "c[2]", "c[99999]", "c[", "]", "(", ")", ")", ",",
    ", ", " ", "'", '"', "'a'", "5", "-3.5", "10%", "1e3", "abc", "$12", "2020-01-02", "%",
]  # fmt: skip

TOKEN_SOUP = st.lists(st.sampled_from(_VOCAB), max_size=14).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=60), TOKEN_SOUP)
CELLS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "abc", "1,234", "$5", "50%", "#N/A", "2022-12-01", "31/12/2020"]),
    st.text(max_size=8),
)
TABLES = st.lists(st.lists(CELLS, max_size=4), min_size=0, max_size=6)


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(text=ANY_TEXT, data=TABLES)
def test_fuzz_only_cf_errors(text, data):
    try:
        canon = canonical(text)
    except CFError:
        assert not is_valid(text)
    else:
        assert is_valid(text)
        assert canonical(canon) == canon  # the canonical form is itself canonical
    try:
        execute(text, data)
    except CFError:
        pass


_COLS = st.sampled_from(["", "c[0], ", "c[1], ", "c[3], ", "LEN(c[0]), "])
_LIT = st.one_of(
    st.integers(-50, 50).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.sampled_from(["'abc'", '"A b"', "'2020-01-02'", "'$5'", "10%", "c[2]"]),
)
_TEXT_LIT = st.text(st.characters(blacklist_characters="()'\"", codec="utf-8"), max_size=6)


@st.composite
def _leaf(draw):
    kind = draw(st.integers(0, 5))
    col = draw(_COLS)
    if kind == 0:
        name = draw(st.sampled_from(["GreaterThan", "LessThan", "GreaterThanEquals", "Equals"]))
        lit = draw(_LIT)
        return f"{name}({col}{'7' if not col and lit == 'c[2]' else lit})"
    if kind == 1:
        # A column reference is no bound: `Between(c[2], 0)` would read as column + one bound.
        lo, hi = draw(_LIT.filter(lambda x: x != "c[2]")), draw(_LIT.filter(lambda x: x != "c[2]"))
        return f"Between({col}{lo}, {hi})"
    col = col.replace("LEN(c[0]), ", "")
    if kind == 2:
        name = draw(st.sampled_from(["TextContains", "TextEquals", "StartsWith", "EndsWith"]))
        lit = draw(_TEXT_LIT)
        return f"{name}({col}'{lit}')" if col else f"{name}({lit})"
    if kind == 3:
        name = draw(st.sampled_from(["Blanks", "Errors", "Duplicates", "AboveAverage", "IconSet"]))
        return f"{name}({col.rstrip(', ')})"
    if kind == 4:
        return f"LastMonth({col.rstrip(', ')})"
    name = draw(st.sampled_from(["top", "Bottom", "TopPercent", "BottomPercent"]))
    k = draw(st.sampled_from(["1", "2", "10", "50", "0", "2.5", "150"]))
    return f"{name}({col}{k})"


VALID_RULES = st.recursive(
    _leaf(),
    lambda kids: st.one_of(
        kids.map(lambda k: f"NOT({k})"),
        st.lists(kids, min_size=1, max_size=3).flatmap(
            lambda ks: st.sampled_from(["AND", "OR"]).map(lambda op: f"{op}({', '.join(ks)})")
        ),
    ),
    max_leaves=5,
)


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(rule=VALID_RULES, data=TABLES)
def test_fuzz_generated_rules_execute_or_fail_cleanly(rule, data):
    assert is_valid(rule), rule
    canon = canonical(rule)
    assert canonical(canon) == canon
    try:
        cells = execute(rule, data)
    except CFExecError:
        return
    assert all(1 <= r < len(data) and 0 <= c for r, c in cells)
    # the canonical form means the same thing as the rule it came from
    assert execute(canon, data) == cells
