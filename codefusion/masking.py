"""Language-aware masking for continuous paragraph denoising (CPD) pre-training.

In CPD for code, identifiers and built-in keywords of a snippet are replaced by a mask token in
the *encoder's* input, and the model is trained to denoise the whole, unmasked snippet. This
module finds the maskable units of a snippet (:func:`maskable_spans`) and masks a random
subset of them (:func:`mask_code`).

What is maskable, per language (a span is always a run of characters of the source text):

``python``
    Every ``NAME`` token of :mod:`tokenize`: identifiers, keywords (``keyword.kwlist``), soft
    keywords (``match``, ``case``, ``_``, ``type``) and builtin names (``print``, ``len``...).
    String literals (f-strings included on Python < 3.12; from 3.12 tokenize yields the names
    inside an f-string's replacement fields, and those are masked), comments and numbers are
    never masked. Snippets may be single, possibly incomplete statements: tokens produced
    before a tokenizer error (or before the first ``ERRORTOKEN``, e.g. a stray quote) are kept,
    and the rest of the text is scanned with a regular expression for identifiers
    (``[^\\W\\d]\\w*``, i.e. ``[A-Za-z_]\\w*`` plus Unicode letters, kept when
    ``str.isidentifier``) outside of string literals (prefixed, triple-quoted and unterminated
    ones included) and comments. If tokenize's positions ever disagree with the text, the regex
    scan is used for the whole snippet.

``bash``
    Parsed with :mod:`bashlex`. Every shell word counts (the utility name, each flag, each
    argument, assignment words, redirect targets, and the reserved words ``if``/``for``/
    ``do``/``done``...), including the words of commands nested in ``$(...)``, backticks and
    ``<(...)``, **provided** the word's source text is "plain": it consists only of
    ``[\\w./~@%+:,=-]`` and contains at least one letter. So ``find``, ``-name``, ``--max-depth=2``,
    ``/usr/bin/env``, ``out.txt`` and ``a`` are masked; quoted words (``'*.py'``, ``"$x"``),
    words with expansions (``$HOME``, ``$(ls)`` as a whole), globs (``*.txt``), numbers
    (``10``, ``-14``) and punctuation (``.``, ``{}``, ``\\;``, ``[``) are not, mirroring Python
    where string and number literals stay visible. Here-document bodies are never masked.
    When bashlex fails, the fallback splits the text into runs of characters that are not
    whitespace, quotes or shell operators (``|&;<>()`` and backtick), skipping quoted strings
    and ``#`` comments, and applies the same "plain word" test to each run.

``cf``
    The Excel conditional-formatting rule language (see :mod:`codefusion.cfrules`). Function
    names (``AND``, ``GreaterThan``, ``TextContains``) and, for more denoising signal, every bare
    identifier-like word of a literal (``TextContains(Non-pooled, en)`` masks ``TextContains``,
    ``Non``, ``pooled`` and ``en``). Not masked: the ``c`` of a column reference ``c[1]``,
    numbers (``5``, ``10%``), and quoted strings (``"x"``, ``'Worldwide'``). As in the CF parser,
    a quote opens a string only at the start of an argument (after ``(`` or ``,``), so the
    apostrophe of a bare literal such as ``Men's`` does not hide the words after it.

The public functions accept any ``str`` as code and never raise on it. Which scanner a
language uses is said once, in the language registry (:mod:`codefusion.languages`).
"""

from __future__ import annotations

import io
import math
import random
import re
import tokenize
from collections.abc import Callable
from typing import Any

import bashlex

__all__ = ["MASK_TOKEN", "bash_spans", "cf_spans", "mask_code", "maskable_spans", "python_spans"]

MASK_TOKEN = "<mask>"
"""The default token that replaces a masked span."""

Span = tuple[int, int]
Scanner = Callable[[str], list[Span]]  # code -> the spans of its maskable units

# ---------------------------------------------------------------------------------- python

# One pass over the text: comments and string literals are consumed (and ignored) so that the
# identifiers inside them are not found. Every loop below has alternatives that start with
# different characters, and each string pattern always succeeds once started (a missing closing
# quote runs to the end of the line, or of the text for triple quotes), so the scan is linear.
_PY_PREFIX = r"(?:[rRbBuUfF]{1,2})?"
_PY_FALLBACK = re.compile(
    r"(?P<skip>"
    r"\#[^\n]*"
    rf"|{_PY_PREFIX}'''(?:[^'\\]|\\[\s\S]?|'(?!''))*(?:'''|\Z)"
    rf'|{_PY_PREFIX}"""(?:[^"\\]|\\[\s\S]?|"(?!""))*(?:"""|\Z)'
    rf"|{_PY_PREFIX}'(?:[^'\\\n]|\\[\s\S]?)*(?:'|(?=\n)|\Z)"
    rf'|{_PY_PREFIX}"(?:[^"\\\n]|\\[\s\S]?)*(?:"|(?=\n)|\Z)'
    r")"
    r"|(?P<name>(?<!\w)[^\W\d]\w*)"
)


def _python_regex_spans(code: str, start: int = 0) -> list[Span]:
    """Identifiers outside strings and comments, found by a regex scan from ``start``."""
    return [
        m.span("name")
        for m in _PY_FALLBACK.finditer(code, start)
        if m.group("name") and m.group("name").isidentifier()
    ]


def python_spans(code: str) -> list[Span]:
    """NAME tokens of :mod:`tokenize`; the regex scan takes over where tokenize fails."""
    # tokenize reads lines as StringIO.readline returns them: split after each "\n" only.
    line_starts = [0]
    line_starts.extend(i + 1 for i, ch in enumerate(code) if ch == "\n")

    def offset(row: int, col: int) -> int:
        # End-of-text tokens (NEWLINE, DEDENT) may sit on a row past the last line.
        if row > len(line_starts):
            return len(code)
        return line_starts[max(row, 1) - 1] + col

    spans: list[Span] = []
    resume = 0  # where the regex scan would take over
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code, newline="\n").readline):
            if tok.type == tokenize.ENDMARKER:
                return spans
            start, end = offset(*tok.start), offset(*tok.end)
            if tok.type == tokenize.ERRORTOKEN and not tok.string.isspace():
                resume = start
                break
            if tok.type == tokenize.NAME:
                if code[start:end] != tok.string:
                    return _python_regex_spans(code)  # positions disagree with the text
                if tok.string.isidentifier():  # 3.11's tokenizer calls any \w+ run a NAME
                    spans.append((start, end))
            if start <= end <= len(code):
                resume = max(resume, end)
    except Exception:  # TokenError, IndentationError, SyntaxError...
        pass
    return spans + [s for s in _python_regex_spans(code, resume) if s[0] >= resume]


# ------------------------------------------------------------------------------------ bash

_BASH_PLAIN = re.compile(r"[\w./~@%+:,=-]+")
_BASH_FALLBACK = re.compile(
    r"(?P<skip>'[^']*(?:'|\Z)"
    r'|"(?:[^"\\]|\\[\s\S]?)*(?:"|\Z)'
    r"|(?<![^\s|&;<>()])\#[^\n]*)"
    r"|(?P<word>[^\s'\"|&;<>()`]+)"
)
_BASH_MAX_DEPTH = 200


def _bash_plain(raw: str) -> bool:
    """A word worth masking: only ``[\\w./~@%+:,=-]`` characters, at least one letter."""
    return _BASH_PLAIN.fullmatch(raw) is not None and any(ch.isalpha() for ch in raw)


def _bash_regex_spans(code: str) -> list[Span]:
    """Fallback when bashlex fails: plain unquoted words between whitespace and operators."""
    out = []
    for m in _BASH_FALLBACK.finditer(code):
        if m.group("word") and _bash_plain(m.group("word")):
            out.append(m.span("word"))
    return out


def _bash_walk(node: Any, code: str, out: list[Span], depth: int) -> None:
    """Collect the spans of plain words and reserved words anywhere under a bashlex node."""
    if depth > _BASH_MAX_DEPTH:
        raise RecursionError("bash command nested too deeply")
    kind = getattr(node, "kind", None)
    if kind == "heredoc":
        return
    if kind in ("word", "reservedword", "assignment"):
        pos = getattr(node, "pos", None)
        if (
            isinstance(pos, tuple)
            and len(pos) == 2
            and all(isinstance(p, int) for p in pos)
            and 0 <= pos[0] < pos[1] <= len(code)
            and _bash_plain(code[pos[0] : pos[1]])
        ):
            out.append((pos[0], pos[1]))
    for key, value in vars(node).items():
        if key in ("pos", "kind"):
            continue
        children = value if isinstance(value, list) else [value]
        for child in children:
            if hasattr(child, "kind"):
                _bash_walk(child, code, out, depth + 1)


def bash_spans(code: str) -> list[Span]:
    """Plain words of a bashlex parse, or of the regex fallback when bashlex fails."""
    if not code.strip():
        return []
    try:
        out: list[Span] = []
        for node in bashlex.parse(code):
            _bash_walk(node, code, out, 0)
        return out
    except Exception:  # bashlex raises many error types (ParsingError, NotImplementedError...)
        return _bash_regex_spans(code)


# -------------------------------------------------------------------------------------- cf

_CF_SCAN = re.compile(
    # A quote opens a string only at the start of an argument, as in codefusion.cfrules; a
    # doubled quote inside stands for one quote; an unterminated string runs to the end.
    r"(?P<skip>(?:\A|(?<=[(,]))\s*(?:'(?:[^']|'')*(?:'|\Z)|\"(?:[^\"]|\"\")*(?:\"|\Z)))"
    r"|(?P<name>(?<!\w)[^\W\d]\w*)"
)
_CF_COLREF_AFTER = re.compile(r"\s*\[")


def cf_spans(code: str) -> list[Span]:
    """Function names and bare literal words; not ``c`` of ``c[i]``, numbers or strings."""
    out = []
    for m in _CF_SCAN.finditer(code):
        name = m.group("name")
        if not name or not name.isidentifier():  # e.g. "¼" is \w but no identifier
            continue
        if name in ("c", "C") and _CF_COLREF_AFTER.match(code, m.end()):
            continue  # column reference c[i]
        out.append(m.span("name"))
    return out


# ---------------------------------------------------------------------------------- public


def _clean(spans: list[Span], n: int) -> list[Span]:
    """Sorted, non-empty, in-bounds, non-overlapping spans (the earlier one wins an overlap)."""
    out: list[Span] = []
    for start, end in sorted(set(spans)):
        if 0 <= start < end <= n and (not out or start >= out[-1][1]):
            out.append((start, end))
    return out


def maskable_spans(code: str, scanner: Scanner) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the maskable units of ``code`` found by ``scanner``
    (one of the ``*_spans`` functions above: the language registry, :mod:`codefusion.languages`,
    names each language's). The spans are sorted, non-empty, within ``0..len(code)`` and
    non-overlapping, and ``code[start:end]`` is the unit's source text. Never raises on a
    ``str``; a non-``str`` ``code`` gives no spans.
    """
    if not isinstance(code, str) or not code:
        return []
    try:
        spans = scanner(code)
    except Exception:  # defensive: a scanner bug must not stop a training run
        spans = []
    return _clean(spans, len(code))


def mask_code(
    code: str,
    scanner: Scanner,
    rate: float,
    rng: random.Random,
    mask_token: str = MASK_TOKEN,
) -> str:
    """``code`` with a random subset of its maskable spans replaced by ``mask_token``.

    Each span of :func:`maskable_spans` is masked independently with probability ``rate``
    (one ``rng.random()`` draw per span, in order); if ``rate > 0`` and the draws mask
    nothing, one span chosen by ``rng.randrange`` is masked, so at least one span is masked
    whenever there is one. ``rate`` 0 returns ``code`` unchanged; ``rate`` 1 masks every span.
    Every masked span becomes its own ``mask_token``, even when masked spans are adjacent or
    separated only by whitespace (they are never merged). The text between spans is kept
    verbatim. The result depends only on the arguments and the state of ``rng``.

    Raises :class:`ValueError` for a ``rate`` outside ``[0, 1]``; never raises on the content of
    ``code`` (an empty string is returned unchanged).
    """
    if not isinstance(rate, (int, float)) or math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    spans = maskable_spans(code, scanner)
    if not spans or rate == 0:
        return code
    chosen = [rng.random() < rate for _ in spans]
    if not any(chosen):
        chosen[rng.randrange(len(spans))] = True
    parts: list[str] = []
    last = 0
    for (start, end), masked in zip(spans, chosen, strict=True):
        if masked:
            parts.append(code[last:start])
            parts.append(mask_token)
            last = end
    parts.append(code[last:])
    return "".join(parts)
