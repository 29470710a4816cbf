"""Tests of the CF rule language's parser and canonical form (codefusion.cfrules); the
interpreter's are in test_cf_interpreter.py."""

from __future__ import annotations

import pytest

from codefusion.cfrules import CFParseError, Logic, canonical, is_valid, parse

# ------------------------------------------------------------------------ canonical form


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Duplicates()", "duplicate()"),
        ("GreaterThanEquals(3)", "GreaterThanEqual(3.0)"),
        ("StartsWith(c[0], 'A')", "TextStartsWith(c[0], 'a')"),
        ("EndsWith(c[0], 'X')", 'textendswith(c[0], "x")'),
        ("top(10%)", "TopPercent(10)"),
        ("bottom(5%)", "BottomPercent(5.0)"),
        ("Top(c[1])", "top(c[1], 1)"),
        ("AND(GreaterThanEqual(25),LessThan(50))", "and(LessThan(50), GreaterThanEqual(25))"),
        ("OR(TextEquals(p), TextEquals(ul))", "OR(TextEquals(UL),TextEquals(P))"),
        ("Between(610, 550)", "Between(550, 610)"),
        ("Between(c[2], 4000, 3000)", "between(c[2], 3000, 4000.000)"),
        ("TextContains(FB)", "TextContains('fb')"),
        ("TextContains( FB)", "TextContains(FB)"),  # around a bare literal: layout
        ("TextEquals(a )", "TextEquals('A')"),
        ("Not(Equals(c[2], 0))", "NOT(Equals(c[2], 0.0))"),
        ("GreaterThan(c[1],  37)", "GreaterThan( c[1] , 37 )"),
        ("GreaterThan(LEN(c[0]), 6)", "greaterthan(len(c[0]), 6e0)"),
    ],
)
def test_canonical_equivalences(a, b):
    assert canonical(a) == canonical(b)


def test_canonical_spelling():
    assert canonical("AND(GreaterThanEqual(25),LessThan(50))") == (
        "and(greaterthanequal(25.0), lessthan(50.0))"
    )
    assert canonical("top(10%)") == "toppercent(10.0)"
    assert canonical("TextContains(Non-pooled, en)") == "textcontains('non-pooled, en')"
    assert canonical("TextContains(rich's)") == "textcontains('rich''s')"
    assert canonical("Between(c[2], 4000, 3000)") == "between(c[2], 3000.0, 4000.0)"
    assert canonical("Duplicates(c[3])") == "duplicate(c[3])"
    assert canonical("GreaterThan(50%)") == "greaterthan(0.5)"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("top(10)", "top(10%)"),
        ("TextEquals(2015)", "Equals(2015)"),
        ("GreaterThan(c[1], 5)", "GreaterThan(c[2], 5)"),
        ("TextContains(a b)", "TextContains(ab)"),  # inside a bare literal: part of it
        ("TextContains('a')", "TextContains('A ')"),  # a quoted literal keeps its spaces
        ("NOT(Blanks())", "Blanks()"),
    ],
)
def test_canonical_distinctions(a, b):
    assert canonical(a) != canonical(b)


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    "text",
    [
        "",
        "--",
        "$A2=$A3",
        "if(NOT(isBlank($Sheet1!I2), make green, make red)",
        "SUMPRODUCT(($D4<=$E$4:$E$8)*($E4>=$D$4:$D$8))>1",
        "GreaterThan(5",
        "GreaterThan(5))",
        "GreaterThan()",
        "GreaterThan(1, 2)",
        "GreaterThan(c[1])",
        "Between(1)",
        "Between(1,,2)",
        "TextContains(c[1])",
        "TextContains('abc)",
        "TextContains(c[1], LEN(c[2]))",
        "AND()",
        "AND(5, 6)",
        "NOT(Blanks(), Blanks())",
        "Blanks(3)",
        "Blanks(LEN(c[0]))",
        "top(1, 2)",
        "top(abc)",
        "TopPercent(10%)",
        "LEN(c[0])",
        "Foo(1)",
        "GreaterThan(c[1x], 3)",
        "GreaterThan(1e999)",
        "Blanks() Blanks()",
        "AND(" * 40 + "Blanks()" + ")" * 40,
        "x" * 30_000,
        'TextEquals(Male",formula2:undefined,operator:X.equalTo,}); // more script',
    ],
)
def test_garbage_does_not_parse(text):
    with pytest.raises(CFParseError):
        parse(text)
    assert not is_valid(text)
    with pytest.raises(CFParseError):
        canonical(text)


def test_valid_forms_parse():
    for text in (
        "TextContains(Non-pooled, en)",
        "TextEquals()",
        "NOT(TextContains(適))",
        'AND(NOT(TextEquals("")),NOT(TextEquals(0)))',
        "AND(GreaterThan(0),OR(LessThan(-5251.4737555988249),GreaterThan(14668.41787)))",
        "TextContains(c[1], 'L compatible')",
        'TextContains(c[3], "Worldwide")',
        "TopPercent(c[1], 20)",
        "LastMonth(c[0])",
        "  ColorScale( )  ",
    ):
        assert is_valid(text), text
    assert isinstance(parse("and(blanks(), errors())"), Logic)
    assert not is_valid(None)  # type: ignore[arg-type]
