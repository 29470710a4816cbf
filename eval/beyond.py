"""The measured tables of the README's "Beyond the paper" section.

- :func:`repair_eval` (``python -m eval repair``): test items whose gold was corrupted in one
  documented way (:func:`corrupt`), revised by ``CodeFusion.edit`` under their prompt at each
  strength; the repair rate (top-1 / top-5 correct by the benchmark's own metric) beside the
  rate of handing the input back unchanged.
- :func:`guidance_sweep` (``python -m eval guidance``): ``eval run`` once per guidance scale on
  the held-out share and on the test split; the default scale is chosen on held-out only.

The corruptions are :mod:`eval.corrupt`'s.

Items whose gold fits no corruption of a kind, whose corrupted code the benchmark's metric
still accepts (nothing to repair), or whose corrupted code does not fit the model's canvas are
left out of that kind's rows and counted (``n`` beside every rate).
Generated code is only ever scored by the benchmark's metric (CF: our interpreter), never run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codefusion.data import Example
from codefusion.errors import UserError
from codefusion.languages import language
from eval.corrupt import KINDS, corrupt

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


# --- the commands (python -m eval repair / guidance) ---------------------------------------


def repair_command(args, examples: list) -> int:
    """``python -m eval repair``: the repair table of ``--model`` on ``examples``."""
    import random
    import warnings

    from codefusion.auto import load_generator
    from codefusion.pipeline import CodeFusion

    check_strengths(args.strength)
    from codefusion.generator import resolve_device

    device = resolve_device(args.device)
    gen = load_generator(args.model, device=device)
    if not isinstance(gen, CodeFusion):
        raise UserError("repair edits with a diffusion model, not the autoregressive baseline")
    indices = list(range(len(examples)))
    if args.sample is not None and args.sample < len(examples):
        indices = sorted(random.Random(args.seed).sample(indices, args.sample))
    options = {k: v for k, v in {"steps": args.steps, "guidance": args.guidance}.items() if v}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = repair_eval(
            gen,
            [examples[i] for i in indices],
            args.benchmark,
            args.strength,
            Path(args.out),
            kinds=args.kinds,
            k=args.k,
            num_draws=args.draws,
            batch_size=args.batch_size,
            seed=args.seed,
            indices=indices,
            **options,
        )
    print((Path(args.out) / "table.md").read_text())
    print(f"{m['generation_seconds']:.0f} s -> {args.out}")
    return 0


def guidance_command(args, examples_of) -> int:
    """``python -m eval guidance``: the guidance sweep of ``--model``; ``examples_of(split)``."""
    options = {"k": args.k, "seed": args.seed, "num_draws": args.draws, "steps": args.steps}
    summary = guidance_sweep(
        args.model,
        args.benchmark,
        args.w,
        Path(args.out),
        args.splits,
        examples_of,
        run=not args.collect,
        **options,
    )
    print((Path(args.out) / "guidance.md").read_text())
    print(f"default w (held-out): {summary['chosen_on_heldout']}")
    return 0
