"""The Excel conditional-formatting (CF) rule language of the CodeFusion benchmark.

A rule is one function call such as ``GreaterThan(c[1], 900000)``, ``top(10%)``,
``AND(GreaterThanEqual(25), LessThan(50))`` or ``TextContains(Non-pooled, en)``. This module
holds a hand-written tokenizer and recursive-descent parser (text is never handed to ``eval``,
``exec`` or Python's ``ast``), a small AST, the canonical form used to compare rules without
data.

Two surface formats occur in the data and both are accepted:

* bare literals applied to the default column, e.g. ``TextContains(Non-pooled, en)``: for the
  text functions the whole inner text, commas and inner spaces included, is one literal; the
  whitespace around a bare literal is not part of it (``TextContains( FB)`` is
  ``TextContains(FB)``: tokenizers produce such spaces), while a quoted literal keeps its
  spaces (``TextContains(c[0], ' FB')``);
* column references ``c[i]`` (0-based into the header row) with quoted strings, e.g.
  ``TextEquals(c[3], 'Worldwide')``, ``GreaterThan(LEN(c[0]), 6)``, ``LessThan(c[2], c[1])``.

How rules run on a table (the interpreter, which only evaluation needs) is in
``codefusion/scoring/metrics/cf_interpreter.py``.

Public API: :func:`parse`, :func:`canonical`, :func:`normal_form`, :func:`is_valid`, the AST
classes, and the exceptions :class:`CFError`, :class:`CFParseError`. On any string input the
public functions raise nothing but :class:`CFError` subclasses (:func:`normal_form` none).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CFError",
    "CFParseError",
    "Col",
    "Len",
    "Logic",
    "Num",
    "Pred",
    "Text",
    "canonical",
    "is_valid",
    "normal_form",
    "parse",
    "without_columns",
]

MAX_RULE_CHARS = 20_000  # longer input is rejected outright (no gold rule comes close)
MAX_DEPTH = 32  # maximum nesting of calls; keeps recursion far from Python's stack limit


class CFError(ValueError):
    """Base class of every error raised by this module."""


class CFParseError(CFError):
    """The text is not a well-formed rule."""


# --------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Col:
    """A column reference ``c[i]``, 0-based into the header row; ``index`` None: a column with
    its index removed (:func:`without_columns`)."""

    index: int | None


@dataclass(frozen=True)
class Len:
    """``LEN(c[i])``: the text length of each cell of a column; ``LEN()``: of the default
    column's (``col.index`` None)."""

    col: Col


@dataclass(frozen=True)
class Num:
    """A numeric literal."""

    value: float


@dataclass(frozen=True)
class Text:
    """A text literal (quoted string or bare text)."""

    value: str


Operand = Col | Len | Num | Text


@dataclass(frozen=True)
class Pred:
    """A predicate on cells: ``name`` is canonical, ``subject`` None means the default column."""

    name: str
    subject: Col | Len | None
    args: tuple[Operand, ...]


@dataclass(frozen=True)
class Logic:
    """``and`` / ``or`` (one or more children) or ``not`` (one child), evaluated row-wise."""

    name: str
    args: tuple[Rule, ...]


Rule = Pred | Logic

# Function table: lower-cased surface name -> (canonical name, kind).
_CMP = ("greaterthan", "lessthan", "greaterthanequal", "lessthanequal", "equals", "notequals")
_TEXT = ("textequals", "textcontains", "textstartswith", "textendswith")
_UNARY = ("blanks", "errors", "duplicate", "aboveaverage", "belowaverage", "colorscale")
_UNARY += ("databar", "iconset", "lastmonth", "thismonth", "nextmonth")
_FUNCS: dict[str, tuple[str, str]] = {n: (n, "cmp") for n in _CMP}
_FUNCS |= {n: (n, "text") for n in _TEXT}
_FUNCS |= {n: (n, "unary") for n in _UNARY}
_FUNCS |= {"between": ("between", "between"), "and": ("and", "logic"), "or": ("or", "logic")}
_FUNCS |= {"not": ("not", "not"), "top": ("top", "rank"), "bottom": ("bottom", "rank")}
_FUNCS |= {"toppercent": ("toppercent", "pct"), "bottompercent": ("bottompercent", "pct")}
_FUNCS |= {  # aliases from the spec (plus the symmetric LessThanEquals)
    "greaterthanequals": ("greaterthanequal", "cmp"),
    "lessthanequals": ("lessthanequal", "cmp"),
    "duplicates": ("duplicate", "unary"),
    "startswith": ("textstartswith", "text"),
    "endswith": ("textendswith", "text"),
}

# ------------------------------------------------------------------------ tokenizer + parser

_NAME_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_COLREF = re.compile(r"[cC]\s*\[\s*([0-9]{1,9})\s*\]")
_COLREF_START = re.compile(r"[cC]\s*\[")
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class _Lexer:
    """Context-sensitive tokenizer: the parser asks for the token kind it expects next."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, msg: str) -> CFParseError:
        return CFParseError(f"{msg} at position {self.pos}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        self.skip_ws()
        if self.peek() != ch:
            raise self.error(f"expected {ch!r}")
        self.pos += 1

    def match(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """Match ``pattern`` at the cursor (without consuming)."""
        return pattern.match(self.text, self.pos)

    def call_name(self) -> str | None:
        """Consume ``name(`` and return the name, or None (nothing consumed)."""
        m = self.match(_NAME_CALL)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(1)

    def string(self) -> str:
        """Consume a quoted string; a doubled quote inside stands for one quote."""
        quote, out = self.text[self.pos], []
        self.pos += 1
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch != quote:
                out.append(ch)
            elif self.peek() == quote:
                out.append(quote)
                self.pos += 1
            else:
                return "".join(out)
        raise self.error("unterminated string")

    def chunk(self) -> str:
        """Consume bare text up to the next ``,`` ``(`` or ``)`` (stripped, never empty)."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",()":
            self.pos += 1
        out = self.text[start : self.pos].strip()
        if not out:
            raise self.error("empty argument")
        return out

    def balanced_raw(self) -> str:
        """Consume raw text up to (not including) the ``)`` closing the current call."""
        start, depth = self.pos, 0
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    return self.text[start : self.pos]
                depth -= 1
            self.pos += 1
        raise self.error("unclosed '('")


class _Parser:
    def __init__(self, text: str) -> None:
        self.lex = _Lexer(text)

    def parse(self) -> Rule:
        self.lex.skip_ws()
        rule = self.rule(0)
        self.lex.skip_ws()
        if self.lex.pos != len(self.lex.text):
            raise self.lex.error("trailing text after the rule")
        return rule

    def rule(self, depth: int) -> Rule:
        if depth > MAX_DEPTH:
            raise self.lex.error("nesting too deep")
        name = self.lex.call_name()
        if name is None:
            raise self.lex.error("expected a function call")
        entry = _FUNCS.get(name.lower())
        if entry is None:
            raise self.lex.error(f"unknown function {name!r}")
        canon, kind = entry
        if kind == "text" and self._bare_text_follows():
            # Bare-literal format: the whole inner text (commas, inner spaces) is one literal;
            # the whitespace around it is layout, not value (as for every other bare argument).
            raw = self.lex.balanced_raw()
            self.lex.expect(")")
            return Pred(canon, None, (Text(raw.strip()),))
        args = self.args(depth, textual=kind == "text")
        return _build(canon, kind, args, self.lex)

    def _bare_text_follows(self) -> bool:
        save = self.lex.pos
        self.lex.skip_ws()
        structured = self.lex.peek() in ("'", '"') or bool(self.lex.match(_COLREF_START))
        self.lex.pos = save
        return not structured

    def args(self, depth: int, textual: bool) -> list[Any]:
        """Parse ``arg, arg, ... )`` after an opening parenthesis."""
        out: list[Any] = []
        self.lex.skip_ws()
        if self.lex.peek() == ")":
            self.lex.pos += 1
            return out
        while True:
            out.append(self.arg(depth, textual))
            self.lex.skip_ws()
            ch = self.lex.peek()
            self.lex.pos += 1
            if ch == ")":
                return out
            if ch != ",":
                self.lex.pos -= 1
                raise self.lex.error("expected ',' or ')'")
            self.lex.skip_ws()

    def arg(self, depth: int, textual: bool) -> Any:
        lex = self.lex
        if lex.peek() in ("'", '"'):
            return Text(lex.string())
        m = lex.match(_COLREF)
        if m is not None:
            lex.pos = m.end()
            return Col(int(m.group(1)))
        if lex.match(_COLREF_START):
            raise lex.error("malformed column reference")
        m = lex.match(_NAME_CALL)
        if m is not None:
            if m.group(1).lower() == "len":
                lex.pos = m.end()
                lex.skip_ws()
                if lex.peek() == ")":  # LEN(): the length of the selected (default) column
                    lex.pos += 1
                    return Len(Col(None))
                m2 = lex.match(_COLREF)
                if m2 is None:
                    raise lex.error("LEN takes a column reference, or none")
                lex.pos = m2.end()
                lex.expect(")")
                return Len(Col(int(m2.group(1))))
            return self.rule(depth + 1)
        raw = lex.chunk()
        if textual:
            return Text(raw)
        if PLAIN_NUMBER.fullmatch(raw):
            return _num(raw, lex)
        if raw.endswith("%") and PLAIN_NUMBER.fullmatch(raw[:-1].rstrip()):
            return ("%", _num(raw[:-1].rstrip(), lex).value)  # k% (resolved by _build)
        return Text(raw)


def _num(raw: str, lex: _Lexer) -> Num:
    value = float(raw)
    if not math.isfinite(value):
        raise lex.error("number out of range")
    return Num(value)


def _build(name: str, kind: str, args: list[Any], lex: _Lexer) -> Rule:
    """Check arity and argument types; normalise aliases, percents and default ranks."""

    def fail(msg: str) -> CFParseError:
        return lex.error(f"{name}: {msg}")

    if kind in ("logic", "not"):
        if not args or (kind == "not" and len(args) != 1):
            raise fail("wrong number of arguments")
        if not all(isinstance(a, (Pred, Logic)) for a in args):
            raise fail("arguments must be rules")
        return Logic(name, tuple(args))
    if any(isinstance(a, (Pred, Logic)) for a in args):
        raise fail("a rule cannot be an argument here")
    subject = None
    if args and isinstance(args[0], (Col, Len)):
        subject, args = args[0], args[1:]
    if isinstance(subject, Len) and kind not in ("cmp", "between"):
        raise fail("LEN() is only allowed in comparisons")
    if kind in ("rank", "pct"):
        if len(args) > 1 or (kind == "pct" and not args):
            raise fail("wrong number of arguments")
        k = args[0] if args else Num(1.0)  # Top(c[1]) / top(): the single extreme value
        if isinstance(k, tuple):
            if kind == "pct":
                raise fail("percent sign not allowed")
            name, k = name + "percent", Num(k[1])
        if not isinstance(k, Num):
            raise fail("rank must be a number")
        return Pred(name, subject, (k,))
    # elsewhere a k% literal is just the number k/100 (Excel stores 50% as 0.5)
    args = [Num(a[1] / 100.0) if isinstance(a, tuple) else a for a in args]
    want = {"cmp": 1, "between": 2, "text": 1, "unary": 0}[kind]
    if len(args) != want:
        raise fail(f"expected {want} argument(s) besides the column")
    if kind == "text" and not all(isinstance(a, Text) for a in args):
        raise fail("expected a text literal")
    if kind == "between" and any(isinstance(a, Len) for a in args):
        raise fail("LEN() bound not supported")
    return Pred(name, subject, tuple(args))


def parse(text: str) -> Rule:
    """Parse one rule into its AST; raises :class:`CFParseError` on anything malformed."""
    if not isinstance(text, str):
        raise CFParseError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_RULE_CHARS:
        raise CFParseError("rule text too long")
    return _Parser(text).parse()


def is_valid(text: str) -> bool:
    """True when ``text`` parses as a rule of the language."""
    try:
        parse(text)
    except CFError:
        return False
    return True


# ---------------------------------------------------------------------------- canonical form


def _col(a: Col) -> str:
    return "c" if a.index is None else f"c[{a.index}]"


def _canon_operand(a: Operand) -> str:
    if isinstance(a, Col):
        return _col(a)
    if isinstance(a, Len):
        return "len()" if a.col.index is None else f"len({_col(a.col)})"
    if isinstance(a, Num):
        return repr(a.value)
    return "'" + a.value.lower().replace("'", "''") + "'"


def _canon(rule: Rule) -> str:
    if isinstance(rule, Logic):
        parts = [_canon(a) for a in rule.args]
        if rule.name != "not":
            parts.sort()
        return f"{rule.name}({', '.join(parts)})"
    args = list(rule.args)
    if rule.name == "between":
        if all(isinstance(a, Num) for a in args):
            args.sort(key=lambda a: a.value)
        else:
            args.sort(key=_canon_operand)
    parts = [_canon_operand(a) for a in ([rule.subject] if rule.subject is not None else []) + args]
    return f"{rule.name}({', '.join(parts)})"


def without_columns(rule: Rule) -> Rule:
    """The rule with its column references removed, as a model trained on rules without
    ``c[i]`` writes it: a predicate on ``c[i]`` applies to the default column (subject None),
    ``LEN(c[i])`` becomes LEN of it, and a ``c[j]`` compared against keeps only that it is a
    column (``Col(None)``: such a rule cannot lose its columns, and does not execute)."""
    if isinstance(rule, Logic):
        return Logic(rule.name, tuple(without_columns(a) for a in rule.args))

    def strip(a: Any) -> Any:
        if isinstance(a, Col):
            return Col(None)
        return Len(Col(None)) if isinstance(a, Len) else a

    subject = None if isinstance(rule.subject, Col) else strip(rule.subject)
    return Pred(rule.name, subject, tuple(strip(a) for a in rule.args))


def canonical(text: str | Rule, columns: bool = True) -> str:
    """Canonical form of a rule: lower-case names, aliases resolved, ``top(X%)`` as
    ``toppercent(X)``, AND/OR arguments and Between bounds sorted, numbers as floats, text
    lower-cased. ``columns=False``: of the rule without its column references
    (:func:`without_columns`). Raises :class:`CFParseError` when ``text`` does not parse."""
    rule = parse(text) if isinstance(text, str) else text
    return _canon(rule if columns else without_columns(rule))


def normal_form(text: str) -> str:
    """What counts as the same rule: its canonical form, or for text that does not parse its
    whitespace-normalised self (held-out splits by program, unique@k)."""
    try:
        return canonical(text)
    except CFError:
        return " ".join(text.split())
