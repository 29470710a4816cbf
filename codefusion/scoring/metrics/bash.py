"""Bash template match (NL2Bash style), built on ``bashlex``.

A command is turned into a *template*: utilities, flags and shell structure are kept, every
open argument becomes the placeholder ``ARG``, and two commands match when their templates
are equal. The rules follow ``docs/evaluation.md`` ("Bash: template match"); this is our own
implementation (NL2Bash's normaliser is GPL and is neither copied nor paraphrased).

Rules
-----
* Structure: pipelines (``|``), lists (``&&``, ``||``, ``;``, ``&``), compound commands
  (``{ }``, ``( )``, ``for``/``while``/``if``/functions; their reserved words are kept) are
  walked recursively. A newline between commands counts as ``;``; a trailing ``;`` is dropped.
* Redirects are dropped (``2>/dev/null``, ``> out``, here-documents). A redirect whose target
  holds a command or process substitution keeps that substitution's template (it is a command).
* Command substitution (``$(...)`` or backticks) becomes ``$( T )`` and process substitution
  ``<( T )`` / ``>( T )``, with ``T`` the template of the inner command. A word carrying
  substitutions is replaced by their templates; any other word with an expansion (``$x``,
  ``~``) is an ``ARG``.
* ``sudo`` (and its own options) is dropped; ``egrep``/``fgrep`` become ``grep -E``/``grep -F``;
  the utility is reduced to its base name (``/usr/bin/find`` -> ``find``). Any utility is
  templated, not only those of a grammar (NL2Bash's parser fails on many; we do not copy that).
* Flags keep their order. A single-dash multi-letter flag is split into letters (``-la`` ->
  ``-l -a``), except for ``find``; anything after the leading letters of such a cluster is an
  attached value and becomes ``ARG`` (``-n10`` -> ``-n ARG``, ``-k1,1`` -> ``-k ARG``).
  ``--opt=value`` -> ``--opt ARG``; after ``--`` every word is an argument. Flags are
  recognised on the *unquoted* source text, so a quoted ``'-x'`` is an argument.
* Old-style bundled options expand into flags: the first argument of ``tar``, ``ps``, ``ar``
  and ``jar``, when it is a bare cluster of letters, is a bundle of options (``tar xvf a.tar``
  -> ``tar -x -v -f ARG``, ``ps aux`` -> ``ps -a -u -x``); the letters that take a value take
  it from the words after the bundle, in order (table ``_OLD_STYLE_BUNDLES``). So extracting
  and creating an archive never share a template.
* Arguments become ``ARG``; signed numbers keep their sign (``-mtime -14`` -> ``-mtime -ARG``,
  ``-size +100k`` -> ``-size +ARG``), quoted or not (NL2Bash's parser drops the sign of a quoted
  number; we do not copy that). Exception (our choice): ``-0`` is kept as the flag it always is
  in practice (``xargs -0``, ``du -0``...). ``{}``, ``\\;`` (however quoted) and ``+`` are
  kept.
* The value of an option that selects a format or a type, rather than naming a file or a
  number, stays in the template, as NL2Bash keeps it: find's ``-type``, ``-printf``,
  ``-fstype``, ``-regextype``; ``date +FORMAT``; ``stat -c FORMAT``; ``ls --sort=WORD``; ...
  (table ``_KEPT_VALUES``, one comment per entry). The value is written shell-quoted, so its
  spelling does not matter (``-printf '%p\\n'`` and ``-printf "%p\\n"`` agree) and a value
  with spaces stays one token. A value holding an expansion (``-printf "$fmt"``) is an ``ARG``.
* ``find``: global options ``-H -L -P -D -O`` are kept; a missing start path becomes an
  implicit ``ARG``; each start path is one ``ARG``; ``-o``/``-a`` -> ``-or``/``-and``;
  ``(``/``)`` -> ``\\(``/``\\)``; ``-exec``/``-execdir``/``-ok``/``-okdir`` hold a nested command
  (templated with all these rules) up to ``\\;`` or ``{} +``.
* ``xargs``: its options keep their order (values -> ``ARG``), except that the replace
  string option, however spelled (``-I R``, ``-IR``, ``-i``, ``-iR``, ``--replace[=R]``), is
  removed and ``-I {}`` is emitted after the options, and occurrences of ``R`` in the nested
  command become ``{}``: ``xargs -i cp {} /d`` and ``xargs -I % cp % /d`` are both
  ``xargs -I {} cp {} ARG``. An xargs without a replace string appends its input to the
  command instead (``xargs cp {} /d`` runs ``cp {} /d ITEM...``): a different command, so
  nothing is added to its template. The nested command (default ``echo``) is templated
  recursively.
* Variable assignments become the token ``ASSIGN`` (followed by their substitutions).

When bashlex cannot parse a command, :func:`template` returns ``None``. In
:func:`template_match`, if *neither* side parses the decision falls back to comparing
whitespace-normalised strings (decided by ``"string"``); if exactly *one* side parses it is a
mismatch decided by ``"template"`` (a parseable and an unparseable command cannot have the same
template; the gold commands that bashlex rejects can still be matched by reproducing them
exactly, which goes through the string fallback).

Every public function accepts any ``str`` and never raises: bashlex's errors (including
``NotImplementedError``, ``AssertionError`` and ``RecursionError``) are caught, and the
template walk is depth-limited.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from typing import Any

import bashlex

__all__ = ["ARG", "normalise_whitespace", "template", "template_match"]

ARG = "ARG"
"""The placeholder that replaces every open argument."""

_MAX_DEPTH = 100
_SIGNED_NUMBER = re.compile(r"[+-]\d+(?:\.\d+)?[A-Za-z]*")
_LETTER_CLUSTER = re.compile(r"-([A-Za-z]+)(.*)", re.DOTALL)
_SUDO_OPTS_WITH_VALUE = {"-u", "-g", "-p", "-C", "-U", "-h", "-r", "-t", "-D", "-R", "-T"}
_FIND_EXEC = {"-exec", "-execdir", "-ok", "-okdir"}
_FIND_GLOBAL = {"-H", "-L", "-P"}
_FIND_PUNCT = {"(": "\\(", ")": "\\)", "!": "!", ",": ","}
# xargs single-letter options that take a value (attached or as the next word).
_XARGS_VALUE_REQUIRED = set("nPLdsaE")
# xargs single-letter options whose value can only be attached (-l[N], -e[EOF], -i[R]).
_XARGS_VALUE_OPTIONAL = set("le")
_XARGS_LONG_VALUE = {
    "--max-args",
    "--max-procs",
    "--max-lines",
    "--delimiter",
    "--max-chars",
    "--arg-file",
    "--eof",
    "--process-slot-var",
}


# Utilities whose first argument, when it is a bare cluster of letters (no dash), is a bundle
# of old-style options. Each maps to the letters of such a bundle that take a value: old style
# takes those values from the words after the bundle, in the order of the letters
# (``tar cvfb a.tar 20`` is ``tar -c -v -f a.tar -b 20``).
_OLD_STYLE_BUNDLES: dict[str, str] = {
    # GNU tar's traditional style; values: b blocking factor, C directory, f archive, F script,
    # g snapshot file, H format, I compress program, K member, L tape length, N date,
    # T file list, V label, X exclude file.
    "tar": "bCfFgHIKLNTVX",
    # procps ps, BSD syntax (``ps aux``, ``ps axjf``); values: o/O output format, p pid list,
    # t tty list, U user list, k sort keys.
    "ps": "oOptUk",
    # ar's mandatory key letters (``ar rcs lib.a x.o``); its archive and members are operands.
    "ar": "",
    # the JDK's jar (``jar cvf app.jar dir``); values: f archive, m manifest, e entry point.
    "jar": "fme",
}


@dataclass(frozen=True)
class _Kept:
    """An option whose value stays in the template (see ``_KEPT_VALUES``)."""

    why: str  # what the value selects: the reason it is not an open argument
    files_before: int = 0  # open arguments between the option and its kept value
    attached_only: bool = False  # an optional value, given only attached (``--color=WHEN``)


# Options whose value selects a format or a type, from a closed vocabulary or as a format
# string, rather than naming a file or a number: two commands that differ in it do different
# things, and NL2Bash's templates keep it. utility -> option -> why. ``"+"`` stands for an
# operand that starts with ``+``. Short options also take their value attached (``-c%s``),
# long ones as ``--opt=VALUE``.
_KEPT_VALUES: dict[str, dict[str, _Kept]] = {
    "find": {
        "-type": _Kept("file type letters: f, d, l, ... (the spec keeps it)"),
        "-xtype": _Kept("file type letters, of a symbolic link's target"),
        "-fstype": _Kept("file system type: ext4, nfs, ..."),
        "-regextype": _Kept("regular expression dialect: posix-extended, emacs, ..."),
        "-printf": _Kept("output format: %p, %s, %TY, ..."),
        "-fprintf": _Kept("output format; the output file before it is open", files_before=1),
    },
    "date": {
        "+": _Kept("the +FORMAT operand: output format"),
        "--rfc-3339": _Kept("precision word: date, seconds, ns"),
        "--iso-8601": _Kept("precision word: date, hours, minutes, ...", attached_only=True),
    },
    "stat": {
        "-c": _Kept("output format: %s, %n, %y, ..."),
        "--format": _Kept("output format (as -c)"),
        "--printf": _Kept("output format, backslash escapes interpreted"),
    },
    "ls": {
        "--sort": _Kept("sort key word: size, time, extension, version, none"),
        "--time": _Kept("which timestamp: atime, ctime, birth, ..."),
        "--format": _Kept("listing format word: long, commas, across, ..."),
        "--time-style": _Kept("time format: full-iso, long-iso, +FORMAT, ..."),
        "--indicator-style": _Kept("indicator word: slash, classify, ..."),
        "--quoting-style": _Kept("quoting word: literal, shell, c, ..."),
        "--color": _Kept("when to colour: always, auto, never", attached_only=True),
        "--colour": _Kept("when to colour (as --color)", attached_only=True),
    },
    "du": {
        "--time": _Kept("which timestamp: atime, ctime, ...", attached_only=True),
        "--time-style": _Kept("time format: full-iso, long-iso, +FORMAT, ..."),
    },
    "grep": {
        "--color": _Kept("when to colour: always, auto, never", attached_only=True),
        "--colour": _Kept("when to colour (as --color)", attached_only=True),
        "--binary-files": _Kept("how to treat binary files: binary, text, without-match"),
        "-d": _Kept("what to do with directories: read, skip, recurse"),
        "--directories": _Kept("what to do with directories (as -d)"),
        "-D": _Kept("what to do with devices: read, skip"),
        "--devices": _Kept("what to do with devices (as -D)"),
    },
    "ps": {
        "-o": _Kept("output format: pid,comm,rss, ..."),
        "-O": _Kept("output format added to the default one"),
        "--format": _Kept("output format (as -o)"),
        "--sort": _Kept("sort keys: field names such as -pcpu, rss"),
    },
    "sort": {"--sort": _Kept("ordering word: numeric, human-numeric, month, version, ...")},
    "df": {
        "-t": _Kept("file system type to list"),
        "--type": _Kept("file system type to list (as -t)"),
        "-x": _Kept("file system type to leave out"),
        "--exclude-type": _Kept("file system type to leave out (as -x)"),
        "--output": _Kept("output fields: source, size, pcent, ..."),
    },
    "mount": {
        "-t": _Kept("file system type"),
        "--types": _Kept("file system type (as -t)"),
    },
    "od": {
        "-t": _Kept("output type: x1, c, d4, ..."),
        "--format": _Kept("output type (as -t)"),
        "-A": _Kept("address radix letter: d, o, x, n"),
        "--address-radix": _Kept("address radix letter (as -A)"),
    },
    "seq": {
        "-f": _Kept("printf-style number format"),
        "--format": _Kept("printf-style number format (as -f)"),
    },
    "tar": {
        "-H": _Kept("archive format: gnu, posix, ustar, ..."),
        "--format": _Kept("archive format (as -H)"),
    },
}


class _TemplateError(Exception):
    """Raised internally when a command is too deep (or too odd) to template."""


@dataclass(frozen=True)
class _Word:
    """One shell word: quote-removed text, source text, nested templates, expansion flag."""

    text: str
    raw: str
    subs: tuple[str, ...] = ()
    expanded: bool = False


def normalise_whitespace(cmd: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return " ".join(cmd.split())


def _parse(cmd: str) -> list[Any] | None:
    try:
        nodes = bashlex.parse(cmd)
    except Exception:  # bashlex raises many error types (ParsingError, NotImplementedError...)
        return None
    return list(nodes)


def template(cmd: str) -> str | None:
    """The NL2Bash-style template of ``cmd`` (space-separated tokens), or ``None``.

    ``None`` means bashlex cannot parse the command (or it is empty, or too deeply nested to
    template). Results are cached, since evaluation templates the same gold many times.
    """
    if not isinstance(cmd, str):
        return None
    return _template_cached(cmd.strip())


@functools.lru_cache(maxsize=1 << 16)
def _template_cached(cmd: str) -> str | None:
    if not cmd:
        return None
    nodes = _parse(cmd)
    if not nodes:
        return None
    try:
        tokens: list[str] = []
        for node in nodes:
            part = _strip_trailing_semicolons(_node(node, cmd, 0))
            if not part:
                continue
            if tokens:
                tokens.append(";")
            tokens.extend(part)
    except Exception:  # _TemplateError (too deep), RecursionError, or an odd bashlex tree
        return None
    return " ".join(tokens)


def template_match(pred: str, gold: str) -> tuple[bool, str]:
    """Compare two commands by template; returns ``(correct, decided_by)``.

    ``decided_by`` is ``"template"`` when at least one side parses (a one-sided parse is a
    mismatch), and ``"string"`` when neither parses, in which case whitespace-normalised
    strings are compared.
    """
    pred = pred if isinstance(pred, str) else ""
    gold = gold if isinstance(gold, str) else ""
    tp, tg = template(pred), template(gold)
    if tp is None and tg is None:
        return normalise_whitespace(pred) == normalise_whitespace(gold), "string"
    if tp is None or tg is None:
        return False, "template"
    return tp == tg, "template"


# --------------------------------------------------------------------------- tree walking


def _strip_trailing_semicolons(tokens: list[str]) -> list[str]:
    while tokens and tokens[-1] == ";":
        tokens = tokens[:-1]
    return tokens


def _check_depth(depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _TemplateError("command nested too deeply")


def _node(node: Any, src: str, depth: int) -> list[str]:
    """Template tokens of any bashlex node."""
    _check_depth(depth)
    kind = getattr(node, "kind", None)
    if kind == "command":
        return _command(node, src, depth)
    if kind == "list":
        out: list[str] = []
        for part in node.parts:
            if getattr(part, "kind", None) == "operator":
                out.append(";" if part.op in (";", "\n") else part.op)
            else:
                out.extend(_node(part, src, depth + 1))
        return _strip_trailing_semicolons(out)
    if kind == "pipeline":
        out = []
        for part in node.parts:
            if getattr(part, "kind", None) == "pipe":
                out.append(part.pipe)
            else:
                out.extend(_node(part, src, depth + 1))
        return out
    if kind == "compound":
        out = []
        for part in node.list:
            out.extend(_node(part, src, depth + 1))
        for redirect in getattr(node, "redirects", None) or []:
            out.extend(_node(redirect, src, depth + 1))
        return out
    if kind in ("for", "while", "until", "if", "function", "case", "select"):
        out = []
        for part in getattr(node, "parts", None) or []:
            out.extend(_node(part, src, depth + 1))
        return out
    if kind == "reservedword":
        return [";" if node.word in (";", "\n") else node.word]
    if kind == "operator":
        return [";" if node.op in (";", "\n") else node.op]
    if kind == "pipe":
        return [node.pipe]
    if kind == "word":
        return _plain_arg(_word(node, src, depth))
    if kind == "assignment":
        return ["ASSIGN", *_word(node, src, depth).subs]
    if kind == "redirect":
        target = getattr(node, "output", None)
        if getattr(target, "kind", None) == "word":
            return list(_word(target, src, depth).subs)
        return []
    if kind in ("commandsubstitution", "processsubstitution"):
        return _substitution(node, src, depth).split(" ")
    # heredoc, parameter, tilde and anything unknown: nothing to keep.
    return []


def _substitution(node: Any, src: str, depth: int) -> str:
    inner = " ".join(_node(node.command, src, depth + 1))
    if node.kind == "processsubstitution":
        opener = src[node.pos[0]] if 0 <= node.pos[0] < len(src) else "<"
        opener = opener if opener in "<>" else "<"
        return f"{opener}( {inner} )"
    return f"$( {inner} )"


def _collect_subs(node: Any, src: str, depth: int, subs: list[str]) -> bool:
    """Append substitution templates found under ``node``; True if any expansion was seen."""
    _check_depth(depth)
    expanded = False
    for part in getattr(node, "parts", None) or []:
        kind = getattr(part, "kind", None)
        if kind in ("commandsubstitution", "processsubstitution"):
            subs.append(_substitution(part, src, depth + 1))
            expanded = True
        elif kind in ("parameter", "tilde"):
            expanded = True
            _collect_subs(part, src, depth + 1, subs)
        else:
            expanded = _collect_subs(part, src, depth + 1, subs) or expanded
    return expanded


def _word(node: Any, src: str, depth: int) -> _Word:
    subs: list[str] = []
    expanded = _collect_subs(node, src, depth + 1, subs)
    start, end = node.pos
    return _Word(text=node.word, raw=src[start:end], subs=tuple(subs), expanded=expanded)


def _command(node: Any, src: str, depth: int) -> list[str]:
    prefix: list[str] = []  # leading assignments (``VAR=value cmd``)
    suffix: list[str] = []  # what survives of redirects (substitutions only)
    words: list[_Word] = []
    for part in node.parts:
        kind = getattr(part, "kind", None)
        if kind == "word":
            words.append(_word(part, src, depth + 1))
        elif kind == "assignment" and not words:
            prefix.extend(_node(part, src, depth + 1))
        elif kind == "assignment":  # ``make CC=gcc``: an ordinary argument
            words.append(_word(part, src, depth + 1))
        else:
            suffix.extend(_node(part, src, depth + 1))
    return prefix + _words(words, depth + 1) + suffix


# --------------------------------------------------------------------------- words


def _is_flag(w: _Word) -> bool:
    """A word that starts with an unquoted dash and is more than a lone dash."""
    return len(w.text) > 1 and w.text.startswith("-") and w.raw.startswith("-")


def _plain_arg(w: _Word) -> list[str]:
    """Template of a non-flag word."""
    t = w.text
    if t == "{}":
        return ["{}"]
    if t == ";":
        return ["\\;"]
    if t == "+":
        return ["+"]
    if w.subs:
        return list(w.subs)
    if not w.expanded and _SIGNED_NUMBER.fullmatch(t):
        return [t[0] + ARG]
    return [ARG]


def _unquote(raw: str) -> str:
    """Bash's quote removal on the source text of a word without expansions.

    Single quotes keep every character; inside double quotes a backslash escapes only
    ``$ ` " \\`` and newline and is otherwise kept; outside quotes it escapes any character.
    bashlex drops every backslash inside double quotes (``-printf "%p\\n"`` would read
    ``%pn``), which matters for the values kept in the template.
    """
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(raw):
        c = raw[i]
        i += 1
        if quote == "'":
            if c == "'":
                quote = None
            else:
                out.append(c)
        elif c == "\\" and i < len(raw):
            escaped = raw[i]
            i += 1
            if quote == '"' and escaped not in '$`"\\\n':
                out.append(c + escaped)
            elif escaped != "\n":  # backslash-newline is a line continuation
                out.append(escaped)
        elif c == '"':
            quote = None if quote == '"' else '"'
        elif c == "'" and quote is None:
            quote = "'"
        else:
            out.append(c)
    return "".join(out)


def _kept_value(w: _Word, value: str | None = None) -> list[str]:
    """Template of the value of an option listed in ``_KEPT_VALUES`` (the whole word ``w``,
    or ``value`` when it is attached to the option): the value itself, shell-quoted so that it
    is one token however it was quoted, unless it holds an expansion."""
    if w.subs:
        return list(w.subs)
    if w.expanded:
        return [ARG]
    return [shlex.quote(_unquote(w.raw) if value is None else value)]


def _generic_flag(w: _Word, kept: dict[str, _Kept]) -> tuple[list[str], _Kept | None]:
    """Template of a flag word for a utility other than find/xargs, given the utility's
    kept-value options; the second item is the option whose kept value is the next word."""
    t = w.text
    if t == "-0":
        return ["-0"], None
    if not w.expanded and _SIGNED_NUMBER.fullmatch(t):
        return [t[0] + ARG], None
    if t.startswith("--"):
        if t == "--":
            return ["--"], None
        name, eq, _value = t.partition("=")
        spec = kept.get(name)
        if eq:
            if spec is not None:
                return [name, *_kept_value(w, _unquote(w.raw).partition("=")[2])], None
            return [name, *(w.subs or (ARG,))], None
        return [name], spec if spec is not None and not spec.attached_only else None
    m = _LETTER_CLUSTER.fullmatch(t)
    if m is None:
        return (list(w.subs) if w.subs else ([ARG] if w.expanded else [t])), None
    letters, attached = m.group(1), m.group(2)
    out: list[str] = []
    for j, c in enumerate(letters):
        out.append("-" + c)
        spec = kept.get("-" + c)
        if spec is not None:
            # As getopt reads it: the rest of the word is the value, else the next word is.
            if letters[j + 1 :] + attached:
                return out + _kept_value(w, _unquote(w.raw)[2 + j :]), None
            return out, None if spec.attached_only else spec
    if attached:
        out.extend(w.subs or (ARG,))
    return out, None


def _old_style_bundle(name: str, words: list[_Word]) -> list[_Word]:
    """``words`` with an old-style option bundle (``tar xvf a.tar``) rewritten as the flags it
    stands for, each value-taking letter followed by its value (``-x -v -f a.tar``)."""
    value_letters = _OLD_STYLE_BUNDLES.get(name)
    if value_letters is None or not words:
        return words
    first, rest = words[0], list(words[1:])
    # Unquoted letters only: a quoted word, a path or ``{}`` is an operand, as for flags.
    if first.expanded or first.raw != first.text or not first.text.isascii():
        return words
    if not first.text.isalpha():
        return words
    out: list[_Word] = []
    for c in first.text:
        out.append(_Word(text="-" + c, raw="-" + c))
        if c in value_letters and rest:
            out.append(rest.pop(0))
    return out + rest


def _words(words: list[_Word], depth: int) -> list[str]:
    """Template of a simple command given as words (utility first)."""
    _check_depth(depth)
    i = 0
    n = len(words)
    while i < n and not words[i].expanded and _basename(words[i].text) == "sudo":
        i += 1
        while i < n and _is_flag(words[i]):
            opt = words[i].text
            i += 1
            if opt == "--":
                break
            if opt in _SUDO_OPTS_WITH_VALUE:
                i += 1
    if i >= n:
        return []
    head, rest = words[i], words[i + 1 :]
    if head.expanded:
        out = list(head.subs) if head.subs else [ARG]
        return out + _generic_args("", rest)
    name = _basename(head.text)
    if name == "find":
        return ["find", *_find_args(rest, depth + 1)]
    if name == "xargs":
        return ["xargs", *_xargs_args(rest, depth + 1)]
    if name in ("egrep", "fgrep"):
        return ["grep", "-E" if name == "egrep" else "-F", *_generic_args("grep", rest)]
    return [name, *_generic_args(name, _old_style_bundle(name, rest))]


def _basename(text: str) -> str:
    base = text.rstrip("/").rsplit("/", 1)[-1]
    return base or text


def _generic_args(name: str, words: list[_Word]) -> list[str]:
    """Template of the arguments of utility ``name`` (neither find nor xargs)."""
    kept = _KEPT_VALUES.get(name, {})
    out: list[str] = []
    options_done = False  # after ``--`` every word is an argument
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        i += 1
        if not options_done and _is_flag(w):
            tokens, spec = _generic_flag(w, kept)
            out.extend(tokens)
            options_done = w.text == "--"
            if spec is not None:
                for v in words[i : i + spec.files_before]:
                    out.extend(_plain_arg(v))
                i += spec.files_before
                if i < n:
                    out.extend(_kept_value(words[i]))
                    i += 1
        elif "+" in kept and w.text.startswith("+"):
            out.extend(_kept_value(w))  # date +FORMAT
        else:
            out.extend(_plain_arg(w))
    return out


def _find_args(words: list[_Word], depth: int) -> list[str]:
    out: list[str] = []
    n = len(words)
    i = 0
    # Global options before the start paths.
    while i < n and _is_flag(words[i]):
        t = words[i].text
        if t in _FIND_GLOBAL or t.startswith("-O"):
            out.append(t)
            i += 1
        elif t == "-D":
            out.extend(["-D", ARG])
            i += 2
        else:
            break
    # Start paths (a missing one is an implicit ARG).
    paths: list[str] = []
    while i < n and not _is_flag(words[i]) and words[i].text not in _FIND_PUNCT:
        paths.extend(_plain_arg(words[i]))
        i += 1
    out.extend(paths or [ARG])
    # The expression.
    while i < n:
        w = words[i]
        t = w.text
        if _is_flag(w) and t in _FIND_EXEC:
            out.append(t)
            j = i + 1
            nested: list[_Word] = []
            terminator = None
            while j < n:
                tj = words[j].text
                if tj == ";" or (tj == "+" and nested and nested[-1].text == "{}"):
                    terminator = "\\;" if tj == ";" else "+"
                    break
                nested.append(words[j])
                j += 1
            out.extend(_words(nested, depth + 1))
            if terminator is not None:
                out.append(terminator)
                j += 1
            i = j
            continue
        spec = _KEPT_VALUES["find"].get(t) if _is_flag(w) else None
        if spec is not None:
            out.append(t)
            j = i + 1
            for v in words[j : j + spec.files_before]:
                out.extend(_plain_arg(v))
            j += spec.files_before
            if j < n:
                out.extend(_kept_value(words[j]))
            i = j + 1
            continue
        if _is_flag(w) and t == "-o":
            out.append("-or")
        elif _is_flag(w) and t == "-a":
            out.append("-and")
        elif t in _FIND_PUNCT and not w.expanded:
            out.append(_FIND_PUNCT[t])
        elif _is_flag(w) and not _SIGNED_NUMBER.fullmatch(t):
            if t.startswith("--") and "=" in t:
                out.extend([t.partition("=")[0], *(w.subs or (ARG,))])
            else:
                out.append(t)
        else:
            out.extend(_plain_arg(w))
        i += 1
    return out


def _xargs_args(words: list[_Word], depth: int) -> list[str]:
    opts: list[str] = []
    replace: str | None = None
    n = len(words)
    i = 0
    while i < n and _is_flag(words[i]):
        t = words[i].text
        i += 1
        if t == "--":
            break
        if t.startswith("--"):
            name, eq, value = t.partition("=")
            if name == "--replace":
                replace = value if eq else "{}"
            elif eq:
                opts.extend([name, ARG])
            elif name in _XARGS_LONG_VALUE:
                opts.extend([name, ARG])
                i += 1
            else:
                opts.append(name)
            continue
        body = t[1:]
        k = 0
        while k < len(body):
            c = body[k]
            attached = body[k + 1 :]
            if c == "I":
                if attached:
                    replace = attached
                elif i < n:
                    replace = words[i].text
                    i += 1
                break
            if c == "i":
                replace = attached or "{}"
                break
            opts.append("-" + c)
            if c in _XARGS_VALUE_REQUIRED:
                if not attached and i < n:
                    i += 1
                opts.append(ARG)
                break
            if c in _XARGS_VALUE_OPTIONAL and attached:
                opts.append(ARG)
                break
            k += 1
    command = words[i:]
    if not command:
        command = [_Word(text="echo", raw="echo")]
    if replace is None:
        # No replace string: xargs appends its input items to the command, which is another
        # command than the -I form (``xargs cp {} /d`` is not ``xargs -i cp {} /d``).
        return [*opts, *_words(command, depth + 1)]
    if replace != "{}":
        command = [
            _Word(text="{}", raw="{}") if (w.text == replace and not w.expanded) else w
            for w in command
        ]
    return [*opts, "-I", "{}", *_words(command, depth + 1)]
