"""Documented corruptions of gold code, for the repair table (eval/beyond.py: repair_eval).

Corruptions (one per item and kind, seeded by the item's index, never equal to the gold):

``paren``
    one parenthesis dropped (CF and Bash; a Bash item without one is not applicable);
``name``
    CF: one function name replaced by another of its family (comparisons, text tests, unary
    tests, visual rules, top/bottom, AND/OR); Bash: one utility at a command position
    replaced by another common utility;
``number``
    CF: one number changed (n -> n + 1, n - 1 or 10 n); Bash: one number changed the same way
    or one flag replaced (a ``find`` predicate by another, a short option letter by another),
    whichever the item has (both: chosen by the seed).
"""

from __future__ import annotations

import random
import re

KINDS = ("paren", "name", "number")

# --- corruptions -------------------------------------------------------------------------------

_CF_FAMILIES = (
    ("GreaterThan", "LessThan", "GreaterThanEqual", "LessThanEqual", "Equals", "NotEquals"),
    ("TextEquals", "TextContains", "TextStartsWith", "TextEndsWith"),
    ("Blanks", "Errors", "Duplicate", "AboveAverage", "BelowAverage"),
    ("ColorScale", "DataBar", "IconSet"),
    ("Top", "Bottom", "TopPercent", "BottomPercent"),
    ("AND", "OR"),
)
_CF_FAMILY_OF = {n.lower(): fam for fam in _CF_FAMILIES for n in fam}
_CF_ALIASES = {"greaterthanequals": "greaterthanequal", "lessthanequals": "lessthanequal"}
_CF_ALIASES |= {"duplicates": "duplicate", "startswith": "textstartswith"}
_CF_ALIASES |= {"endswith": "textendswith"}
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\s*\()")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")

BASH_UTILITIES = (
    "find", "grep", "ls", "cat", "sed", "awk", "sort", "uniq", "xargs", "wc", "head", "tail",
    "cut", "rm", "cp", "mv", "chmod", "chown", "tar", "du", "echo", "mkdir", "touch", "tr",
)  # fmt: skip
_FIND_PREDICATES = (
    "-name", "-iname", "-type", "-size", "-mtime", "-mmin", "-atime", "-newer", "-user",
    "-group", "-perm", "-path", "-maxdepth", "-mindepth", "-empty", "-exec", "-print", "-ls",
    "-delete", "-regex",
)  # fmt: skip
_SHORT_FLAG = re.compile(r"^-[a-zA-Z]+$")
_COMMAND_START = {"|", ";", "&&", "||", "$(", "(", "`", "xargs", "sudo", "exec"}


def _changed_number(text: str, rng: random.Random) -> str:
    value = float(text)
    options = {value + 1, value * 10} | ({value - 1} if value >= 1 else set())
    options.discard(value)
    new = rng.choice(sorted(options))
    return str(int(new)) if "." not in text else f"{new:g}"


def _spans(pattern: re.Pattern, text: str) -> list[re.Match]:
    return list(pattern.finditer(text))


def _drop_paren(code: str, rng: random.Random) -> str | None:
    """One parenthesis removed (either language), or None when there is none."""
    where = [i for i, ch in enumerate(code) if ch in "()"]
    if not where:
        return None
    i = rng.choice(where)
    return code[:i] + code[i + 1 :]


def _corrupt_cf(code: str, kind: str, rng: random.Random) -> str | None:
    if kind == "paren":
        return _drop_paren(code, rng)
    if kind == "name":
        calls = [m for m in _spans(_CALL, code) if _family(m.group(1)) is not None]
        if not calls:
            return None
        m = rng.choice(calls)
        name = m.group(1)
        own = _CF_ALIASES.get(name.lower(), name.lower())
        other = rng.choice([n for n in _family(name) if n.lower() != own])
        if name[0].islower():  # the gold's spelling style (e.g. `top`, `aboveAverage`)
            other = other[0].lower() + other[1:]
        return code[: m.start(1)] + other + code[m.end(1) :]
    if kind == "number":
        nums = _spans(_NUMBER, code)
        if not nums:
            return None
        m = rng.choice(nums)
        return code[: m.start()] + _changed_number(m.group(), rng) + code[m.end() :]
    raise ValueError(f"unknown corruption {kind!r}")


def _family(name: str) -> tuple[str, ...] | None:
    return _CF_FAMILY_OF.get(_CF_ALIASES.get(name.lower(), name.lower()))


_BASH_WORD = re.compile(r"\$\(|`|\|\||&&|[|;()]|[^\s|;()`]+")


def _corrupt_bash(code: str, kind: str, rng: random.Random) -> str | None:
    if kind == "paren":
        return _drop_paren(code, rng)
    words = list(_BASH_WORD.finditer(code))
    if kind == "name":
        at = [
            m
            for j, m in enumerate(words)
            if m.group() in BASH_UTILITIES and (j == 0 or words[j - 1].group() in _COMMAND_START)
        ]
        if not at:
            return None
        m = rng.choice(at)
        other = rng.choice([u for u in BASH_UTILITIES if u != m.group()])
        return code[: m.start()] + other + code[m.end() :]
    if kind == "number":
        choices: list[tuple[int, int, str]] = []  # (start, end, replacement)
        for m in words:
            w = m.group()
            if w in _FIND_PREDICATES:
                new = rng.choice([p for p in _FIND_PREDICATES if p != w])
                choices.append((m.start(), m.end(), new))
            elif _SHORT_FLAG.match(w) and len(w) <= 4:
                i = rng.randrange(1, len(w))
                letters = [c for c in "abcdefhilnrstuvx" if c not in w]
                choices.append((m.start(), m.end(), w[:i] + rng.choice(letters) + w[i + 1 :]))
            else:
                for n in _NUMBER.finditer(w):
                    new = _changed_number(n.group(), rng)
                    choices.append((m.start() + n.start(), m.start() + n.end(), new))
        if not choices:
            return None
        a, b, new = rng.choice(choices)
        return code[:a] + new + code[b:]
    raise ValueError(f"unknown corruption {kind!r}")


def corrupt(code: str, kind: str, benchmark: str, seed: int) -> str | None:
    """``code`` corrupted in one way of ``kind`` (see the module doc), the same for the same
    seed; None where the code has nothing to corrupt that way. Never returns ``code``."""
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}: one of {', '.join(KINDS)}")
    fn = {"cf": _corrupt_cf, "bash": _corrupt_bash}.get(benchmark)
    if fn is None:
        raise ValueError(f"no corruptions for the {benchmark} benchmark (cf or bash)")
    rng = random.Random(f"{benchmark}/{kind}/{seed}")
    for _ in range(8):  # another draw when a change happens to give the same text
        out = fn(code, kind, rng)
        if out is None or out != code:
            return out
    return None
