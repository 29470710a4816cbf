"""The measured tables of the README's "Beyond the paper" section.

- :func:`repair_eval` (``python -m eval repair``): test items whose gold was corrupted in one
  documented way (:func:`corrupt`), revised by ``CodeFusion.edit`` under their prompt at each
  strength; the repair rate (top-1 / top-5 correct by the benchmark's own metric) beside the
  rate of handing the input back unchanged.
- :func:`guidance_sweep` (``python -m eval guidance``): ``eval run`` once per guidance scale on
  the held-out share and on the test split; the default scale is chosen on held-out only.

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

Items whose gold fits no corruption of a kind, whose corrupted code the benchmark's metric
still accepts (nothing to repair), or whose corrupted code does not fit the model's canvas are
left out of that kind's rows and counted (``n`` beside every rate).
Generated code is only ever scored by the benchmark's metric (CF: our interpreter), never run.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codefusion.data import Example
from codefusion.errors import UserError
from codefusion.languages import language

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


# --- the repair table --------------------------------------------------------------------------


def _same(a: str, b: str, benchmark: str) -> bool:
    """The edit handed the input back: equal up to whitespace (CF: all of it)."""
    if benchmark == "cf":
        return "".join(a.split()) == "".join(b.split())
    return " ".join(a.split()) == " ".join(b.split())


def repair_items(
    examples: Sequence[Example],
    benchmark: str,
    kinds: Sequence[str],
    fits,
    indices: Sequence[int] | None = None,
) -> tuple[dict[str, list[tuple[int, str]]], dict[str, dict[str, int]]]:
    """Per kind: (position in ``examples``, corrupted code) of every item that has that
    corruption, whose corrupted code the benchmark's metric rejects (a corruption the metric
    cannot see, e.g. a number no row of the item's data tells apart, is no repair task) and
    that fits the canvas (``fits(code) -> bool``); and how many were left out, and why. Item ``j``'s corruption is seeded by ``indices[j]`` (default ``j``): its index in the
    full split, so that a subsample corrupts each item as the whole split does."""
    items: dict[str, list[tuple[int, str]]] = {}
    left: dict[str, dict[str, int]] = {}
    indices = range(len(examples)) if indices is None else indices
    for kind in kinds:
        left[kind] = {"not applicable": 0, "accepted by the metric": 0}
        left[kind]["longer than the canvas"] = 0
        items[kind] = []
        for i, ex in enumerate(examples):
            bad = corrupt(ex.code, kind, benchmark, indices[i])
            if bad is None:
                left[kind]["not applicable"] += 1
            elif language(benchmark).correct(bad, ex.code, ex.data)[0]:
                left[kind]["accepted by the metric"] += 1
            elif not fits(bad):
                left[kind]["longer than the canvas"] += 1
            else:
                items[kind].append((i, bad))
    return items, left


def repair_eval(
    cf: Any,
    examples: Sequence[Example],
    benchmark: str,
    strengths: Sequence[float],
    out_dir: Path,
    kinds: Sequence[str] = KINDS,
    k: int = 5,
    num_draws: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    indices: Sequence[int] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Edit every corrupted item at every strength; write predictions.jsonl, repair.json and
    table.md to ``out_dir`` and return the metrics. ``indices``: the items' indices in the
    full split (a subsample; they seed the corruptions and are written with the records)."""
    from tqdm import tqdm

    scoring = language(benchmark)
    c = cf.config.code_len
    items, left = repair_items(
        examples, benchmark, kinds, lambda code: len(cf.tokenizer.ids(code)) + 1 <= c, indices
    )
    index_of = list(range(len(examples)) if indices is None else indices)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    total = sum(len(v) for v in items.values()) * len(strengths)
    t_start = time.perf_counter()
    with tqdm(total=total, desc="repair", unit="edit", disable=not progress) as bar:
        for kind in kinds:
            todo = items[kind]
            ex_of = [examples[i] for i, _ in todo]
            for s in strengths:
                cands: list[list[Any]] = []
                for b, start in enumerate(range(0, len(todo), batch_size)):
                    chunk = todo[start : start + batch_size]
                    cands.extend(
                        cf.edit(
                            [bad for _, bad in chunk],
                            [examples[i].prompt for i, _ in chunk],
                            strength=s,
                            k=k,
                            num_draws=num_draws,
                            seed=seed + b,
                            allow_empty=True,
                            **options,
                        )
                    )
                    bar.update(len(chunk))
                for (i, bad), ex, cand in zip(todo, ex_of, cands, strict=True):
                    records.append(
                        {
                            "kind": kind,
                            "strength": s,
                            "index": index_of[i],
                            "gold": ex.code,
                            "input": bad,
                            "candidates": [x.code for x in cand],
                            "unchanged": _same(cand[0].code, bad, benchmark),
                        }
                    )
    rows = score_repair(records, examples, benchmark, k, [(a, s) for a in kinds for s in strengths])
    metrics = {
        "benchmark": benchmark,
        "metric": scoring.metric,
        "n_items": len(examples),
        "left_out": left,
        "rows": rows,
        "generation_seconds": round(time.perf_counter() - t_start, 2),
        "options": {"k": k, "num_draws": num_draws, "seed": seed, **options},
    }
    with (out_dir / "predictions.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out_dir / "repair.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "table.md").write_text(repair_table(metrics, k))
    return metrics


def score_repair(
    records: list[dict[str, Any]],
    examples: Sequence[Example],
    benchmark: str,
    k: int,
    keys: Sequence[tuple[str, float]] = (),
) -> list[dict[str, Any]]:
    """The records' verdicts (``correct``, and ``figures`` for a language with further figures,
    written into each record) and one row per (corruption, strength): repaired top-1 and top-k
    under each figure, and how often the top-1 is the unchanged input; ``keys``: (corruption,
    strength) rows in order, empty ones included."""
    spec = language(benchmark)
    figures = {"main": spec.correct, **{n: f.correct for n, f in spec.figures.items()}}
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    for kind, strength in keys:
        hits = {name: [0, 0] for name in figures}
        rows[kind, strength] = {"kind": kind, "strength": strength, "n": 0, "hits": hits, "same": 0}
    for r in records:
        ex = examples[r["index"]]
        verdicts = {
            n: [fn(c, ex.code, ex.data)[0] for c in r["candidates"]] for n, fn in figures.items()
        }
        r["correct"] = verdicts.pop("main")
        if verdicts:
            r["figures"] = verdicts
        row = rows.setdefault(
            (r["kind"], r["strength"]),
            {"kind": r["kind"], "strength": r["strength"], "n": 0, "hits": {}, "same": 0},
        )
        row["n"] += 1
        row["same"] += r["unchanged"]
        for name, ok in {"main": r["correct"], **verdicts}.items():
            h = row["hits"].setdefault(name, [0, 0])
            h[0] += ok[0]
            h[1] += any(ok[:k])
    out = []
    for row in rows.values():
        n = max(row["n"], 1)
        main = row["hits"].pop("main")
        entry = {
            "kind": row["kind"],
            "strength": row["strength"],
            "n": row["n"],
            "repair_top1": 100 * main[0] / n,
            f"repair_top{k}": 100 * main[1] / n,
            "unchanged_top1": 100 * row["same"] / n,
        }
        if row["hits"]:
            entry["figures"] = {
                name: {"repair_top1": 100 * a / n, f"repair_top{k}": 100 * b / n}
                for name, (a, b) in row["hits"].items()
            }
        out.append(entry)
    return out


def rescore_repair(out_dir: Path, examples: Sequence[Example]) -> dict[str, Any]:
    """Score a repair table's saved candidates again with the current metrics (the test split
    given); rewrites predictions.jsonl, repair.json and table.md."""
    path = out_dir / "repair.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    records = [json.loads(line) for line in (out_dir / "predictions.jsonl").open(encoding="utf-8")]
    for r in records:
        if r["gold"] != examples[r["index"]].code:
            raise UserError(f"{out_dir}: item {r['index']} is not that of the data given")
    k = int(metrics["options"].get("k", 5))
    keys = [(r["kind"], r["strength"]) for r in metrics["rows"]]
    metrics["rows"] = score_repair(records, examples, metrics["benchmark"], k, keys)
    metrics["metric"] = language(metrics["benchmark"]).metric
    with (out_dir / "predictions.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "table.md").write_text(repair_table(metrics, k))
    return metrics


def repair_table(metrics: dict[str, Any], k: int = 5) -> str:
    """Markdown: one row per (corruption, strength), each figure's repair rates."""
    names = list(metrics["rows"][0].get("figures") or {}) if metrics["rows"] else []
    head = " / ".join(["main", *[n.replace("_", "-") for n in names]])
    head = f" ({head})" if names else ""
    lines = [
        f"Repair of corrupted {metrics['benchmark']} test gold ({metrics['metric']}"
        + (f"; then {', '.join(n.replace('_', '-') for n in names)}" if names else "")
        + f"); top-{k} of {metrics['options']['num_draws']} edit draws.",
        "",
        f"| corruption | strength | n | repaired top-1{head} | repaired top-{k}{head} "
        "| unchanged top-1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in metrics["rows"]:
        figs = [r, *[r["figures"][n] for n in names]]
        t1 = " / ".join(f"{f['repair_top1']:.1f}" for f in figs)
        tk = " / ".join(f"{f[f'repair_top{k}']:.1f}" for f in figs)
        lines.append(
            f"| {r['kind']} | {r['strength']:g} | {r['n']} | {t1} | {tk} | {r['unchanged_top1']:.1f} |"
        )
    left = "; ".join(
        f"{kind}: " + (", ".join(f"{v} {why}" for why, v in d.items() if v) or "none")
        for kind, d in metrics["left_out"].items()
    )
    lines += ["", f"Left out of {metrics['n_items']} items: {left}."]
    return "\n".join(lines) + "\n"


# --- the guidance sweep ------------------------------------------------------------------------


def _w_dir(w: float) -> str:
    return f"w{w:g}"


def guidance_sweep(
    model: str,
    benchmark: str,
    scales: Sequence[float],
    out_dir: Path,
    splits: Sequence[str],
    examples_of,
    run: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """``eval run`` at every scale on every split (``examples_of(split)``), skipping a run
    whose metrics.json holds the same options; the default w is the best on held-out top-1
    (ties: top-5, then the scale nearest 1). ``run=False`` only collects saved runs."""
    import warnings

    from eval.harness import run_eval

    gen = None
    results: dict[str, dict[float, dict[str, Any]]] = {}
    for split in splits:
        results[split] = {}
        for w in scales:
            d = out_dir / split / _w_dir(w)
            want = {"guidance": float(w), **options}
            path = d / "metrics.json"
            if path.exists():
                m = json.loads(path.read_text())
                have = {key: m["options"].get(key) for key in want}
                if have == want:
                    results[split][w] = m
                    continue
            if not run:
                continue
            if gen is None:
                from codefusion.auto import load_generator

                gen = load_generator(model, device="cpu")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[split][w] = run_eval(
                    gen, benchmark, examples_of(split), d, f"w = {w:g}", guidance=float(w),
                    split=split, **options,
                )  # fmt: skip
    held = results.get("heldout", {})
    chosen = None
    if held:
        chosen = max(held, key=lambda w: (held[w]["top1"], held[w]["top5"], -abs(w - 1)))
    summary = {"benchmark": benchmark, "model": model, "chosen_on_heldout": chosen}
    summary["rows"] = [{"w": w, **{s: _brief(results[s].get(w)) for s in splits}} for w in scales]
    (out_dir / "guidance.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "guidance.md").write_text(guidance_table(summary, splits))
    return summary


def _brief(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "n": m["n"],
        "top1": m["top1"],
        "top3": m["top3"],
        "top5": m["top5"],
        "unique@5": m["diversity"]["unique@k"],
        "seconds": m.get("generation_seconds"),
        "figures": {
            n: {k: f[k] for k in ("top1", "top5")} for n, f in (m.get("figures") or {}).items()
        },
    }


def guidance_table(summary: dict[str, Any], splits: Sequence[str]) -> str:
    first = next((r[s] for r in summary["rows"] for s in splits if r[s]), None) or {}
    names = list(first.get("figures") or {})
    extra = "".join(f" {n.replace('_', '-')} top-1/5 |" for n in names)
    head, rule = "| w |", "|---:|"
    for s in splits:
        head += (
            f" {s} top-1 | {s} top-3 | {s} top-5 |"
            + extra.replace(" top-1/5", f" {s} top-1/5")
            + f" {s} unique@5 |"
        )
        rule += "---:|" * (4 + len(names))
    lines = [head, rule]
    for r in summary["rows"]:
        mark = " (chosen)" if r["w"] == summary["chosen_on_heldout"] else ""
        cells = f"| {r['w']:g}{mark} |"
        for s in splits:
            b = r[s]
            if b is None:
                cells += " – |" * (4 + len(names))
                continue
            figs = "".join(
                f" {b['figures'][n]['top1']:.1f} / {b['figures'][n]['top5']:.1f} |" for n in names
            )
            cells += f" {b['top1']:.1f} | {b['top3']:.1f} | {b['top5']:.1f} |{figs} {b['unique@5']:.2f} |"
        lines.append(cells)
    ns = ", ".join(
        f"{s}: {next((r[s]['n'] for r in summary['rows'] if r[s]), '?')} items" for s in splits
    )
    lines += [
        "",
        f"{ns}. The default w is the best held-out top-1 (ties: top-5, then nearest 1); "
        "the test columns are reported, never used to choose.",
    ]
    return "\n".join(lines) + "\n"


def check_strengths(strengths: Sequence[float]) -> None:
    for s in strengths:
        if not 0 < s <= 1:
            raise UserError(f"strength must lie in (0, 1], got {s}")
