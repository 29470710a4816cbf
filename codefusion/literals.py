"""Literals of a gold program that its prompt states, and whether a tokenizer makes them the same
tokens in both: the precondition of copying a literal from the prompt.

A literal is a number, or a quoted or bare text argument (CF: the rule's arguments, columns
aside; Bash: the words that are neither utilities nor flags; Python: string and number
constants). It is *in the prompt* when it occurs there as a whole word with the same case. It
is *identical* when the tokens covering it, in the prompt and in the code, start and end at its
edges and have the same ids. Copy rate: the share of candidates that carry every in-prompt
literal of the gold exactly (measured on the candidates whose rule has the gold's shape).
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Callable
from typing import Any

from codefusion.cfrules import PLAIN_NUMBER, CFError, Logic, Text, parse

_COLREF = re.compile(r"[cC]\s*\[\s*\d+\s*\]")


def cf_literals(code: str) -> list[str]:
    """Numbers (as written) and text arguments of a CF rule, column references aside."""
    try:
        rule = parse(code)
    except CFError:
        return []
    texts: list[str] = []

    def walk(r: Any) -> None:
        if isinstance(r, Logic):
            for a in r.args:
                walk(a)
            return
        texts.extend(a.value for a in r.args if isinstance(a, Text))

    walk(rule)
    numbers = PLAIN_NUMBER.findall(_COLREF.sub(" ", code))
    return [t.strip() for t in texts if t.strip()] + [n.lstrip("+") for n in numbers]


def bash_literals(code: str) -> list[str]:
    """The words of a command that are neither its utility nor a flag, quotes removed."""
    try:
        words = shlex.split(code)
    except ValueError:
        return []
    out, first = [], True
    for w in words:
        if w in ("|", "&&", "||", ";"):
            first = True
            continue
        if first:
            first = False
            continue
        if not w.startswith("-") and w not in ("{}", ";", "+"):
            out.append(w)
    return out


def python_literals(code: str) -> list[str]:
    """String constants and numbers (as written) of a Python snippet."""
    try:
        tree = ast.parse(code.strip())
    except (SyntaxError, ValueError, RecursionError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip():
            out.append(node.value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            seg = ast.get_source_segment(code.strip(), node)
            if seg:
                out.append(seg)
    return out


LITERALS: dict[str, Callable[[str], list[str]]] = {
    "cf": cf_literals,
    "bash": bash_literals,
    "python": python_literals,
}


def in_prompt(literal: str, prompt: str) -> bool:
    """The literal occurs in the prompt as a whole word (same case)."""
    return bool(literal) and re.search(rf"(?<!\w){re.escape(literal)}(?!\w)", prompt) is not None


def _span_ids(tokenizer: Any, text: str, literal: str) -> list[int] | None:
    """Ids of the tokens covering the first whole-word occurrence of ``literal`` in ``text``,
    or None when a token crosses its edges."""
    m = re.search(rf"(?<!\w){re.escape(literal)}(?!\w)", text)
    if m is None:
        return None
    enc = tokenizer.hf(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = []
    for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        if b <= m.start() or a >= m.end():
            continue
        if a < m.start() or b > m.end():
            return None  # a token crosses the literal's edge
        ids.append(tid)
    return ids


def identical_ids(tokenizer: Any, literal: str, prompt: str, code: str) -> bool:
    """The literal is the same token ids in the prompt and in the code (module doc)."""
    a, b = _span_ids(tokenizer, prompt, literal), _span_ids(tokenizer, code, literal)
    return a is not None and a == b


def literal_report(tokenizer: Any, examples: list, lang: str) -> dict[str, Any]:
    """Over ``examples``' golds: in-prompt numbers and text literals, and the share whose
    token ids are identical in prompt and code."""
    counts = {"numbers": [0, 0], "text": [0, 0]}
    for ex in examples:
        code = _COLREF.sub("", ex.code) if lang == "cf" else ex.code  # as a model writes it
        for lit in LITERALS[lang](ex.code):
            if not in_prompt(lit, ex.prompt or ""):
                continue
            kind = "numbers" if PLAIN_NUMBER.fullmatch(lit) else "text"
            counts[kind][1] += 1
            counts[kind][0] += identical_ids(tokenizer, lit, ex.prompt, code)
    return {
        kind: {"identical": a, "in_prompt": n, "share": 100 * a / n if n else None}
        for kind, (a, n) in counts.items()
    }


def cf_shape(code: str) -> str | None:
    """A CF rule's form with its columns removed and every literal a placeholder."""
    from codefusion.cfrules import Num, Pred, canonical, without_columns

    try:
        rule = without_columns(parse(code))
    except CFError:
        return None

    def blank(r: Any) -> Any:
        if isinstance(r, Logic):
            return Logic(r.name, tuple(blank(a) for a in r.args))
        args = tuple(Text("_") if isinstance(a, Text | Num) else a for a in r.args)
        return Pred(r.name, r.subject, args)

    return canonical(blank(rule))


def bash_shape(code: str) -> str | None:
    """A command's template (utilities and flags, every argument a placeholder)."""
    from codefusion.scoring.metrics.bash import template

    return template(code)


def python_shape(code: str) -> str | None:
    """A snippet's ``ast.dump`` with every constant a placeholder."""
    try:
        tree = ast.parse(code.strip())
    except (SyntaxError, ValueError, RecursionError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.value = "_"
    return ast.dump(tree)


SHAPES: dict[str, Callable[[str], str | None]] = {
    "cf": cf_shape,
    "bash": bash_shape,
    "python": python_shape,
}


def copy_diagnostics(examples: list, candidates: list, lang: str, strict: list | None = None):
    """Why candidates miss (the copy work's diagnostics), over ``examples`` and their ranked
    ``candidates`` (objects with ``.code``):

    - ``copy_rate``: among the candidates with the gold's shape (:data:`SHAPES`) whose gold
      states literals in its prompt, the share that carry every one of them exactly (all of the
      top-k: the lower-ranked ones are often the same rule with other literals);
    - ``copy_rate_top1``: the same among top-1 candidates alone;
    - ``right_shape_top1``: the share of items whose top-1 has the gold's shape;
    - ``literal_free_top1``: top-1 accuracy (``strict`` verdicts per item, else shape equality)
      on the items whose gold has no literal: the rule's structure alone."""
    shape_of, lits_of = SHAPES[lang], LITERALS[lang]
    carried = right = shape1 = free = free_ok = carried1 = right1 = 0
    for i, (ex, cands) in enumerate(zip(examples, candidates, strict=True)):
        gold_shape = shape_of(ex.code)
        wanted = [x for x in lits_of(ex.code) if in_prompt(x, ex.prompt or "")]
        shapes = [shape_of(c.code) for c in cands]
        shape1 += bool(shapes) and gold_shape is not None and shapes[0] == gold_shape
        if not lits_of(ex.code):
            free += 1
            ok = strict[i][0] if strict is not None else bool(shapes) and shapes[0] == gold_shape
            free_ok += bool(cands) and bool(ok)
        if not wanted or gold_shape is None:
            continue
        for rank, (c, sh) in enumerate(zip(cands, shapes, strict=True)):
            if sh == gold_shape:
                have = lits_of(c.code)
                ok = all(w in have for w in wanted)
                right, carried = right + 1, carried + ok
                if rank == 0:
                    right1, carried1 = right1 + 1, carried1 + ok
    n = max(1, len(examples))
    return {
        "copy_rate": 100 * carried / right if right else None,
        "copy_rate_top1": 100 * carried1 / right1 if right1 else None,
        "right_shape_candidates_with_prompt_literals": right,
        "right_shape_top1": 100 * shape1 / n,
        "literal_free_items": free,
        "literal_free_top1": 100 * free_ok / free if free else None,
    }
