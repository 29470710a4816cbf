"""Tests for codefusion.masking: maskable spans per language and random masking for CPD."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codefusion.languages import NAMES as LANGUAGES
from codefusion.languages import mask_code, maskable_spans
from codefusion.masking import MASK_TOKEN


def words(code: str, lang: str) -> list[str]:
    return [code[a:b] for a, b in maskable_spans(code, lang)]


# ---------------------------------------------------------------------------------- python


def test_python_statement_masks_names_not_strings():
    assert words("x = os.path.join(a, 'b')", "python") == ["x", "os", "path", "join", "a"]


def test_python_multiline_offsets_keywords_and_builtins():
    code = "def f(x):\n    if x:\n        return len(x)  # len here\n    return None\n"
    spans = maskable_spans(code, "python")
    assert [code[a:b] for a, b in spans] == [
        "def",
        "f",
        "x",
        "if",
        "x",
        "return",
        "len",
        "x",
        "return",
        "None",
    ]
    # offsets are character offsets into the whole text, not (row, col)
    assert spans[3] == (code.index("if"), code.index("if") + 2)
    assert spans[-1] == (code.rindex("None"), code.rindex("None") + 4)


def test_python_soft_keywords_and_unicode_and_crlf():
    assert words("match x:\n    case _: pass", "python") == ["match", "x", "case", "_", "pass"]
    assert words("a = 1\r\nb = c\r\n", "python") == ["a", "b", "c"]
    assert words("café = naïve + 1", "python") == ["café", "naïve"]


def test_python_numbers_strings_comments_are_not_masked():
    code = 'print(0x1f, 1e5, 1_000, rb\'raw\', """doc\nstring""")  # comment words'
    assert words(code, "python") == ["print"]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("foo(a, b", ["foo", "a", "b"]),  # EOF in multi-line statement
        ("x = 'abc def", ["x"]),  # unterminated string: its words stay visible
        ('s = """abc\ndef', ["s"]),  # unterminated triple-quoted string
        ("if x:\n  y\n z = 1", ["if", "x", "y", "z"]),  # inconsistent dedent
        ("x = $y + café", ["x", "y", "café"]),  # error token
        ("else:", ["else"]),  # a lone clause
    ],
)
def test_python_incomplete_snippets_fall_back(code, expected):
    assert words(code, "python") == expected


# ------------------------------------------------------------------------------------ bash


def test_bash_pipeline_masks_utilities_flags_and_plain_arguments():
    code = "find . -name '*.py' | xargs grep -l foo"
    assert words(code, "bash") == ["find", "-name", "xargs", "grep", "-l", "foo"]


def test_bash_nested_reserved_words_redirects_and_assignments():
    code = "X=1 cmd $(ls -la /tmp) && if [ -f a ]; then rm a 2>/dev/null; fi"
    assert words(code, "bash") == [
        "X=1",
        "cmd",
        "ls",
        "-la",
        "/tmp",
        "if",
        "-f",
        "a",
        "then",
        "rm",
        "a",
        "/dev/null",
        "fi",
    ]
    code = "for f in *.txt; do echo $f > out.txt; done"
    assert words(code, "bash") == ["for", "f", "in", "do", "echo", "out.txt", "done"]


def test_bash_numbers_globs_quotes_expansions_and_heredocs_are_not_masked():
    assert words('head -n 10 -mtime -14 --max-depth=2 *.log "$HOME" $x', "bash") == [
        "head",
        "-n",
        "-mtime",
        "--max-depth=2",
    ]
    assert words("cat <<EOF\nhello world\nEOF\n", "bash") == ["cat", "EOF"]


def test_bash_fallback_when_bashlex_fails():
    # bashlex rejects the unterminated quote; the fallback skips the quoted rest
    assert words("echo 'unterminated | grep x", "bash") == ["echo"]
    assert words("grep -r foo src ) (", "bash") == ["grep", "-r", "foo", "src"]


# -------------------------------------------------------------------------------------- cf


def test_cf_function_names_not_column_refs_numbers_or_strings():
    code = 'AND(GreaterThan(c[1], 5), TextContains(c[0], "x"))'
    assert words(code, "cf") == ["AND", "GreaterThan", "TextContains"]
    assert words("TextEquals(c[3], 'Worldwide')", "cf") == ["TextEquals"]
    assert words("top(10%)", "cf") == ["top"]


def test_cf_bare_literal_words_are_masked():
    assert words("TextContains(Non-pooled, en)", "cf") == ["TextContains", "Non", "pooled", "en"]
    assert words("GreaterThan(13 Days)", "cf") == ["GreaterThan", "Days"]
    # an apostrophe inside a bare literal does not open a string
    assert words("TextContains(Men's shoes)", "cf") == ["TextContains", "Men", "s", "shoes"]


# ------------------------------------------------------------------------------- mask_code


def test_mask_code_rate_zero_and_one():
    code = "x = os.path.join(a, 'b')"
    assert mask_code(code, "python", 0.0, random.Random(0)) == code
    assert mask_code(code, "python", 1.0, random.Random(0)) == (
        "<mask> = <mask>.<mask>.<mask>(<mask>, 'b')"
    )
    bash = "find . -name '*.py' | xargs grep -l foo"
    assert mask_code(bash, "bash", 1.0, random.Random(0), mask_token="[M]") == (
        "[M] . [M] '*.py' | [M] [M] [M] [M]"  # adjacent masks stay separate
    )


def test_mask_code_is_deterministic_and_masks_at_least_one():
    code = "def f(x):\n    return sorted(x, key=len)\n"
    a = [mask_code(code, "python", 0.3, random.Random(seed)) for seed in range(20)]
    b = [mask_code(code, "python", 0.3, random.Random(seed)) for seed in range(20)]
    assert a == b
    assert len(set(a)) > 1  # the seed matters
    for out in a:
        assert MASK_TOKEN in out
    # a tiny rate still masks exactly one span
    out = mask_code(code, "python", 1e-9, random.Random(1))
    assert out.count(MASK_TOKEN) == 1


def test_mask_code_keeps_unmasked_text_verbatim():
    code = 'AND(GreaterThan(c[1], 5), TextContains(c[0], "x"))'
    rng = random.Random(3)
    for _ in range(20):
        out = mask_code(code, "cf", 0.5, rng)
        assert "c[1], 5)" in out and 'c[0], "x"))' in out


def test_mask_code_edge_cases_and_errors():
    rng = random.Random(0)
    assert mask_code("", "python", 0.5, rng) == ""
    assert mask_code("  123 'x'  ", "python", 1.0, rng) == "  123 'x'  "  # nothing maskable
    with pytest.raises(ValueError, match="'java'"):
        mask_code("x", "java", 0.5, rng)
    with pytest.raises(ValueError, match="'Python'"):
        maskable_spans("x", "Python")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            mask_code("x", "python", bad, rng)


# ------------------------------------------------------------------------------------ fuzz

_CODE_CHARS = "abcxyzABCZ_019 \t\n\r\\'\"`#$()[]{}<>|&;,.:=+-*/%!?~@^é\x0c\x00'''\"\"\"\u2028"
_texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=_CODE_CHARS, max_size=80),
    st.lists(
        st.sampled_from(
            [
                "if",
                "x",
                "(",
                ")",
                ":",
                "\n",
                "  ",
                "'",
                '"""',
                "#",
                "$(",
                "|",
                "-la",
                "c[0]",
                "AND(",
                "<<EOF\n",
                "\\",
                ",",
                "for",
                "do",
                "done",
            ]
        ),
        max_size=25,
    ).map("".join),
)


@pytest.mark.parametrize("lang", LANGUAGES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(code=_texts, seed=st.integers(0, 2**32 - 1), rate=st.floats(0.0, 1.0))
def test_fuzz_never_raises_and_spans_are_valid(lang, code, seed, rate):
    spans = maskable_spans(code, lang)
    prev_end = 0
    for start, end in spans:
        assert 0 <= prev_end <= start < end <= len(code)
        prev_end = end
    for start, end in spans:
        unit = code[start:end]
        if lang == "bash":
            assert not any(ch.isspace() or ch in "'\"$|&;<>()`" for ch in unit)
        else:  # Python and CF units are identifiers (keywords included)
            assert unit.isidentifier(), unit
    out = mask_code(code, lang, rate, random.Random(seed), mask_token="\x01")
    assert isinstance(out, str)
    n_masked = out.count("\x01") - code.count("\x01")
    if spans and rate > 0:
        assert 1 <= n_masked <= len(spans)
    else:
        assert out == code
    if spans:
        full = mask_code(code, lang, 1.0, random.Random(seed), mask_token="\x01")
        expected, last = [], 0
        for start, end in spans:
            expected += [code[last:start], "\x01"]
            last = end
        assert full == "".join(expected) + code[last:]
