"""The interpreter of the CF rule language: the cells of a table a rule highlights.

Evaluation alone runs rules (``codefusion/scoring/metrics/cf.py``, execution match); the parser, the AST and
the canonical form it works on are the library's (:mod:`codefusion.cfrules`), which masking and
the data loaders need too.

Semantics follow docs/evaluation.md ("CF rules: execution match"). Choices the spec leaves
open, fixed here and tested:

* a cell ``"50%"`` is the number 0.5 (as Excel stores it); a literal ``50%`` likewise, except as
  the rank of ``top``/``bottom`` where ``top(50%)`` means ``TopPercent(50)``;
* ``Top(c[1])`` / ``Bottom(c[1])`` without a rank mean the single extreme value (rank 1);
* an ordering comparison or Between whose literal bound is not a number or date (e.g.
  ``GreaterThan(13 Days)``) is a :class:`CFExecError`; Equals/NotEquals compare it as text;
* a ``c[j]`` on the right is compared row by row and is not highlighted; the highlighted cells
  are those of each predicate's tested column;
* a column past the data reads as blank cells, as in a spreadsheet (see ``_Table.column``);
* ``LastMonth``/``ThisMonth``/``NextMonth`` (test gold 839) count months from the latest date
  in the column, not from today, so that results are reproducible.

Public API: :func:`execute` and :class:`CFExecError`. On any string input it raises nothing but
:class:`~codefusion.cfrules.CFError` subclasses.
"""

from __future__ import annotations

import datetime as _dt
import math
import operator
import re
from collections import Counter
from typing import Any

from codefusion.cfrules import (
    PLAIN_NUMBER,
    CFError,
    Col,
    Len,
    Logic,
    Num,
    Operand,
    Pred,
    Rule,
    Text,
    parse,
)

__all__ = ["CFExecError", "execute", "needs_default", "tested_columns"]

MAX_COLUMNS = 16_384  # Excel's column count (A..XFD); c[i] must stay below it


class CFExecError(CFError):
    """The rule parses but cannot be evaluated on the given table."""


_CURRENCY = "$€£¥"
_THOUSANDS = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]*)?")
_ISO_DATE = re.compile(
    r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})(?:[ T][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?"
)
_SLASH_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_ERROR_CELL = re.compile(
    r"#(?:N/A|DIV/0!|VALUE!|REF!|NAME\?|NUM!|NULL!|ERR|ERROR!?|SPILL!|CALC!|GETTING_DATA)",
    re.IGNORECASE,
)
_EXCEL_EPOCH = _dt.date(1899, 12, 30)


def _date_serial(y: int, m: int, d: int) -> int | None:
    try:
        return (_dt.date(y, m, d) - _EXCEL_EPOCH).days
    except ValueError:
        return None


def _parse_date(s: str) -> int | None:
    """ISO ``yyyy-mm-dd`` or day-first ``dd/mm/yyyy`` as an Excel day number."""
    m = _ISO_DATE.fullmatch(s)
    if m:
        return _date_serial(int(m[1]), int(m[2]), int(m[3]))
    m = _SLASH_DATE.fullmatch(s)
    if m:
        # Day-first per the spec; month-first only when day-first is impossible (8/27/2020).
        day_first = _date_serial(int(m[3]), int(m[2]), int(m[1]))
        return day_first if day_first is not None else _date_serial(int(m[3]), int(m[1]), int(m[2]))
    return None


def _parse_number(s: str) -> float | None:
    """Number in a text cell or literal: sign, currency sign, thousands separators, ``%``."""
    s = s.strip()
    if not s or len(s) > 64:
        return None
    pct = s.endswith("%")
    if pct:
        s = s[:-1].rstrip()
    sign = 1.0
    if s.startswith(("+", "-")):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:].lstrip()
    if s.startswith(tuple(_CURRENCY)):  # $5, -$5, $-5
        s = s[1:].lstrip()
        if s.startswith(("+", "-")) and sign == 1.0:
            sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    elif s.endswith(tuple(_CURRENCY)):  # 5€
        s = s[:-1].rstrip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    elif not PLAIN_NUMBER.fullmatch(s) or s.startswith(("+", "-")):
        return None
    value = sign * float(s) / (100.0 if pct else 1.0)
    return value if math.isfinite(value) else None


class _Cell:
    """One cell, pre-digested: display text, numeric value, date flag, blank and error flags."""

    __slots__ = ("text", "num", "is_date", "blank", "error")

    def __init__(self, raw: Any) -> None:
        self.num: float | None = None
        self.is_date = False
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            self.text = ""
        elif isinstance(raw, bool):  # TRUE/FALSE are not numbers
            self.text = "TRUE" if raw else "FALSE"
        elif isinstance(raw, (int, float)):
            try:
                value = float(raw)
                self.text = str(raw)
            except (OverflowError, ValueError):  # ints too large for a float or for str()
                value, self.text = math.inf, "#NUM!"
            if math.isfinite(value):
                self.num = value
            if isinstance(raw, float) and raw.is_integer() and abs(raw) < 1e15:
                self.text = str(int(raw))  # 1006.0 reads as "1006", as Excel shows it
        else:
            self.text = str(raw)
            stripped = self.text.strip()
            serial = _parse_date(stripped)
            if serial is not None:
                self.num, self.is_date = float(serial), True
            else:
                self.num = _parse_number(stripped)
        self.blank = self.text.strip() == ""
        self.error = self.num is None and bool(_ERROR_CELL.fullmatch(self.text.strip()))


class _Table:
    def __init__(self, data: Any) -> None:
        if not isinstance(data, (list, tuple)) or not all(
            isinstance(r, (list, tuple)) for r in data
        ):
            raise CFExecError("data must be a list of rows, header first")
        self.header = list(data[0]) if data else []
        self.rows = [list(r) for r in data[1:]]
        self.ncols = max([len(self.header)] + [len(r) for r in self.rows])
        self.all_rows = frozenset(range(1, len(self.rows) + 1))
        self._cols: dict[int, list[_Cell]] = {}

    def column(self, j: int) -> list[_Cell]:
        # A column past the data reads as empty cells, as in a spreadsheet. The data needs this:
        # test gold 782 is NOT(Duplicates(c[2])) on a two-column table and the spec counts it
        # among the 116 items decided by execution. Only Excel's own limit is an error.
        if j is None:  # a rule's column reference with its index removed (without_columns)
            raise CFExecError("a column compared against has no index")
        if not 0 <= j < MAX_COLUMNS:
            raise CFExecError(f"column c[{j}] is beyond the sheet's {MAX_COLUMNS} columns")
        if j not in self._cols:
            self._cols[j] = [_Cell(r[j] if j < len(r) else None) for r in self.rows]
        return self._cols[j]

    def default_columns(self) -> list[int]:
        """Where rules without ``c[i]`` apply."""
        if self.header and self.header[0] == "Index" and "Value" in self.header:
            return [self.header.index("Value")]
        if self.ncols == 1:
            return [0]
        return list(range(self.ncols))


def _rows_where(cells: list[_Cell], test: Any) -> frozenset[int]:
    """1-based rows whose cell passes ``test``."""
    return frozenset(i for i, cell in enumerate(cells, 1) if test(cell))


def _literal_number(a: Text | Num) -> float:
    if isinstance(a, Num):
        return a.value
    value = _parse_date(a.value.strip())
    value = float(value) if value is not None else _parse_number(a.value)
    if value is None:
        raise CFExecError(f"not a number: {a.value!r}")
    return value


def _operand_values(a: Operand, tbl: _Table) -> list[Any]:
    """Per-row values of a right-hand operand: numbers, text, or cells."""
    if isinstance(a, Col):
        return tbl.column(a.index)
    if isinstance(a, Len):
        return [float(len(c.text)) for c in tbl.column(a.col.index)]
    return [a] * len(tbl.rows)


def _num_of(v: Any) -> float | None:
    if isinstance(v, _Cell):
        return v.num
    if isinstance(v, float):
        return v
    return _literal_number(v)


_ORDER = {
    "greaterthan": operator.gt,
    "lessthan": operator.lt,
    "greaterthanequal": operator.ge,
    "lessthanequal": operator.le,
}
_TEXT_TESTS = {  # (cell text, literal), both lower-cased; no trimming
    "textequals": operator.eq,
    "textcontains": lambda s, t: t in s,
    "textstartswith": str.startswith,
    "textendswith": str.endswith,
}


def _equals(left: _Cell | float, right: Any) -> bool:
    lnum = left.num if isinstance(left, _Cell) else left
    ltext = left.text if isinstance(left, _Cell) else repr(left)
    if isinstance(right, Text):  # a literal: numeric when it reads as a number, else text
        try:
            right = _literal_number(right)
        except CFExecError:
            return ltext.lower() == right.value.lower()
    if isinstance(right, Num):
        right = right.value
    rnum = right.num if isinstance(right, _Cell) else right
    if lnum is not None and rnum is not None:
        return lnum == rnum
    if isinstance(right, _Cell):
        return ltext.lower() == right.text.lower()
    return False


def _rank(cells: list[_Cell], name: str, k: float) -> frozenset[int]:
    """Top/bottom k (or k%) numeric cells; the k-th value is a threshold, so ties are kept."""
    top = name.startswith("top")
    nums = sorted((c.num for c in cells if c.num is not None), reverse=top)
    if name.endswith("percent"):
        if not 0 < k <= 100:
            raise CFExecError(f"{name}: percent must be in (0, 100]")
        count = max(1, math.floor(len(nums) * k / 100))
    elif k < 1 or not k.is_integer():
        raise CFExecError(f"{name}: rank must be a positive whole number")
    else:
        count = int(min(k, len(nums) or 1))
    if not nums:
        return frozenset()
    cut = nums[min(count, len(nums)) - 1]
    if top:
        return _rows_where(cells, lambda c: c.num is not None and c.num >= cut)
    return _rows_where(cells, lambda c: c.num is not None and c.num <= cut)


def _month_rows(cells: list[_Cell], shift: int) -> frozenset[int]:
    # Excel's "a date occurring last/this/next month" is relative to today; to keep the
    # metric deterministic "today" is the latest date in the column.
    dates = [c.num for c in cells if c.is_date and c.num is not None]
    if not dates:
        return frozenset()
    ref = _EXCEL_EPOCH + _dt.timedelta(days=int(max(dates)))
    month = ref.year * 12 + ref.month - 1 + shift

    def hit(c: _Cell) -> bool:
        if not c.is_date or c.num is None:
            return False
        d = _EXCEL_EPOCH + _dt.timedelta(days=int(c.num))
        return d.year * 12 + d.month - 1 == month

    return _rows_where(cells, hit)


def _subject_column(subject: Col | Len | None, default: int | None) -> int:
    """The column a predicate tests: its ``c[i]``, or the default column (``LEN`` of a column
    whose index was removed too)."""
    col = subject.col if isinstance(subject, Len) else subject
    j = default if col is None or col.index is None else col.index
    if j is None:
        raise CFExecError("rule needs a column but the table has none")
    return j


def _eval_pred(p: Pred, tbl: _Table, default: int | None) -> frozenset[int]:
    if isinstance(p.subject, Len):
        cells: list[Any] = [
            float(len(c.text)) for c in tbl.column(_subject_column(p.subject, default))
        ]
    else:
        cells = tbl.column(_subject_column(p.subject, default))
    name = p.name
    idx = range(len(cells))
    if name in _ORDER or name == "between":
        lefts = [_num_of(v) for v in cells]
        bounds = [[_num_of(v) for v in _operand_values(a, tbl)] for a in p.args]
        if name == "between":
            lows = [
                None if a is None or b is None else min(a, b) for a, b in zip(*bounds, strict=True)
            ]
            highs = [
                None if a is None or b is None else max(a, b) for a, b in zip(*bounds, strict=True)
            ]
            hit = [
                x is not None and lo is not None and lo <= x <= hi
                for x, lo, hi in zip(lefts, lows, highs, strict=True)
            ]
        else:
            op, rights = _ORDER[name], bounds[0]
            hit = [
                x is not None and y is not None and op(x, y)
                for x, y in zip(lefts, rights, strict=True)
            ]
        return frozenset(i + 1 for i in idx if hit[i])
    if name in ("equals", "notequals"):
        rights = _operand_values(p.args[0], tbl)
        eq = [_equals(cells[i], rights[i]) for i in idx]
        return frozenset(i + 1 for i in idx if eq[i] == (name == "equals"))
    if name in _TEXT_TESTS:
        test, lit = _TEXT_TESTS[name], p.args[0].value.lower()  # type: ignore[union-attr]
        return _rows_where(cells, lambda c: test(c.text.lower(), lit))
    if name == "blanks":
        return _rows_where(cells, lambda c: c.blank)
    if name == "errors":
        return _rows_where(cells, lambda c: c.error)
    if name in ("colorscale", "databar", "iconset"):
        return _rows_where(cells, lambda c: not c.blank)
    if name == "duplicate":
        keys = [
            None if c.blank else (c.num if c.num is not None else c.text.lower()) for c in cells
        ]
        counts = Counter(k for k in keys if k is not None)
        return frozenset(i + 1 for i in idx if keys[i] is not None and counts[keys[i]] > 1)
    if name in ("aboveaverage", "belowaverage"):
        nums = [c.num for c in cells if c.num is not None]
        if not nums:
            return frozenset()
        mean = math.fsum(nums) / len(nums)
        above = name == "aboveaverage"
        return _rows_where(
            cells, lambda c: c.num is not None and (c.num > mean if above else c.num < mean)
        )
    if name in ("top", "bottom", "toppercent", "bottompercent"):
        return _rank(cells, name, _literal_number(p.args[0]))
    if name in ("lastmonth", "thismonth", "nextmonth"):
        return _month_rows(cells, {"lastmonth": -1, "thismonth": 0, "nextmonth": 1}[name])
    raise CFExecError(f"no semantics for {name}")  # unreachable: the parser checks names


def _eval(rule: Rule, tbl: _Table, default: int | None) -> frozenset[int]:
    if isinstance(rule, Pred):
        return _eval_pred(rule, tbl, default)
    parts = [_eval(a, tbl, default) for a in rule.args]
    if rule.name == "not":
        return tbl.all_rows - parts[0]
    if rule.name == "and":
        return frozenset.intersection(*parts)
    return frozenset.union(*parts)


def _subjects(rule: Rule, default: int | None) -> set[int | None]:
    """Columns whose cells get highlighted: each predicate's tested column (a ``c[j]`` on the
    right is only compared against, never highlighted)."""
    if isinstance(rule, Logic):
        return set().union(*(_subjects(a, default) for a in rule.args))
    s = rule.subject.col if isinstance(rule.subject, Len) else rule.subject
    return {default if s is None or s.index is None else s.index}


def needs_default(rule: Rule) -> bool:
    """Whether some predicate of ``rule`` tests the default column (no ``c[i]`` subject)."""
    if isinstance(rule, Logic):
        return any(needs_default(a) for a in rule.args)
    s = rule.subject.col if isinstance(rule.subject, Len) else rule.subject
    return s is None or s.index is None


def tested_columns(rule: Rule, data: list[list[Any]]) -> list[int]:
    """The columns whose cells ``rule`` highlights on ``data``: its predicates' ``c[i]``, and
    for those without one the table's default columns (see :func:`execute`)."""
    tbl = _Table(data)
    defaults = tbl.default_columns() if needs_default(rule) else [None]
    return sorted({c for d in defaults for c in _subjects(rule, d) if c is not None})


def execute(
    text: str | Rule, data: list[list[Any]], defaults: list[int] | None = None
) -> frozenset[tuple[int, int]]:
    """Highlighted cells of ``data`` (header row first) under the rule, as ``(row, col)``
    pairs with ``row`` 1-based into ``data`` (``data[row][col]``). Rules without ``c[i]``
    apply to ``defaults``, each column on its own; by default the Value column of Index/Value
    tables, column 0 of a one-column table and each column otherwise. Raises
    :class:`CFParseError` or :class:`CFExecError`."""
    rule = parse(text) if isinstance(text, str) else text
    if not isinstance(rule, (Pred, Logic)):
        raise CFExecError("expected rule text or a parsed rule")
    tbl = _Table(data)
    if not needs_default(rule):
        defaults = [None]
    elif defaults is None:
        defaults = list(tbl.default_columns())
    out: set[tuple[int, int]] = set()
    for d in defaults:
        rows = _eval(rule, tbl, d)
        cols = {c for c in _subjects(rule, d) if c is not None}
        out.update((r, c) for r in rows for c in cols)
    return frozenset(out)
