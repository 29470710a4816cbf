"""The benchmark harness: generate top-k for a test split, score it (``codefusion.scoring``),
write predictions, metrics and a markdown table beside the paper's numbers; score saved
predictions again after a metric changed (:func:`rescore`).

Any :class:`~codefusion.generator.Generator` works (CodeFusion, the autoregressive baseline):
``options`` go to its ``generate`` as given (its own options; another's is its error).
Candidates are ranked by the model; the reference is used only to score them.

Bash is reported twice: our template match on every test item, and the NL2Bash-comparable
figure, which counts only the items NL2Bash's official evaluation can score (listed in the data
folder's ``nl2bash-official-defined.json``) over all items. The paper's Bash numbers stand beside
the second (``codefusion.scoring.paper.BESIDE_PAPER``). Without the list the second figure is omitted, and
``metrics.json`` and ``table.md`` say so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codefusion.data import Example
from codefusion.errors import UserError
from codefusion.generator import Candidate
from codefusion.languages import NAMES
from codefusion.scoring.evaluate import Nl2BashSubset, generate_all, length_accuracy, score
from codefusion.scoring.metrics import python as py_m
from codefusion.scoring.paper import BESIDE_PAPER, PAPER_TOPK, PAPER_VALIDITY


def add_codebertscore(metrics: dict, records: list[dict], model_dir: str, k: int = 5) -> None:
    """CodeBERTScore F1/F3 of the top-1 and best-of-k against a local model directory."""
    scorer = py_m.CodeBERTScorer(model_dir)
    preds, refs, owner = [], [], []
    for i, r in enumerate(records):
        for c in r["candidates"][:k]:
            preds.append(c["code"])
            refs.append(r["gold"])
            owner.append(i)
    s = scorer.score(preds, refs)
    best: dict[int, list[float]] = {}
    first: dict[int, float] = {}
    for j, i in enumerate(owner):
        best.setdefault(i, []).append(s["f1"][j])
        first.setdefault(i, s["f1"][j])
    n = max(1, len(records))
    metrics["codebertscore_f1_top1"] = 100 * sum(first.values()) / n
    metrics["codebertscore_f1_best_of_k"] = 100 * sum(max(v) for v in best.values()) / n


def markdown_table(metrics: dict[str, Any], system: str) -> str:
    """Our top-1/3/5 beside the paper's, naming each metric variant."""
    b = metrics["benchmark"]
    paper = PAPER_TOPK[b]
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        f"### {b}: top-k accuracy (%), n = {metrics['n']}",
        "",
        "| system | metric | top-1 | top-3 | top-5 | valid top-1 |",
        "|---|---|---|---|---|---|",
        f"| {system} (ours) | {metrics['metric']} | {fmt(metrics['top1'])} | {fmt(metrics['top3'])} "
        f"| {fmt(metrics['top5'])} | {fmt(metrics['valid_top1'])} |",
    ]
    nb = metrics.get("nl2bash_comparable")
    if nb is not None and "top1" in nb:
        lines.append(
            f"| {system} (ours, NL2Bash-comparable) | {nl2bash_metric(nb, metrics['n'])} "
            f"| {fmt(nb['top1'])} | {fmt(nb['top3'])} | {fmt(nb['top5'])} "
            f"| {fmt(metrics['valid_top1'])} |"
        )
    for name, fig in (metrics.get("figures") or {}).items():
        lines.append(
            f"| {system} (ours, {figure_label(name, b)}) | {fig['metric']} | {fmt(fig['top1'])} "
            f"| {fmt(fig['top3'])} | {fmt(fig['top5'])} | {fmt(metrics['valid_top1'])} |"
        )
    for name, row in paper.items():
        if name == "metric":
            continue
        v = PAPER_VALIDITY[b].get(name.split()[0]) if name.startswith("CodeFusion") else None
        lines.append(
            f"| {name} (paper, {row['tag']}) | {paper['metric']} | {fmt(row['top1'])} | {fmt(row['top3'])} "
            f"| {fmt(row['top5'])} | {fmt(v)} |"
        )
    d = metrics["diversity"]
    if BESIDE_PAPER.get(b) == "nl2bash_comparable":
        lines += ["", nl2bash_beside_paper_note([metrics])]
    if metrics.get("figures"):
        lines += ["", figures_note(metrics)]
    lines += [
        "",
        f"Diversity of the top-5 (ours): unique@k {d['unique@k']:.2f}, distinct-4 {d['distinct-4']:.2f}, "
        f"mean pairwise edit distance {d['mean_pairwise_edit_distance']:.2f} "
        "(paper [est]: 4-gram diversity 0.81, edit distance 0.57; definitions differ).",
        "",
        "Decided by: "
        + ", ".join(f"{h} {c}" for h, c in sorted(metrics["decided_by"].items()))
        + "; top-5 per subset: "
        + ", ".join(f"{h} {v:.1f}%" for h, v in sorted(metrics["top5_by_decided_by"].items())),
    ]
    if "bleu4_top1" in metrics:
        lines.append(
            f"\nPython offline metrics: BLEU-4 top-1 {metrics['bleu4_top1']:.1f}, best-of-k sentence BLEU "
            f"{metrics['bleu4_best_of_k']:.1f}, chrF top-1 {metrics['chrf_top1']:.1f}."
        )
    return "\n".join(lines) + "\n"


def figure_label(name: str, benchmark: str) -> str:
    """A further figure's name in a table, marked when it is the one beside the paper's."""
    label = name.replace("_", "-")
    return label + (", beside the paper's" if BESIDE_PAPER.get(benchmark) == name else "")


def figures_note(metrics: dict[str, Any]) -> str:
    """What the further figures are and which stands beside the paper (CF)."""
    note = (
        "The paper's CF numbers stand beside the selection-applied figure: 114 of the 178 test "
        "golds name columns (c[i]) that no training rule has, the paper does not say how it "
        "scored them, and a spreadsheet applies a rule to the range the user selected; under it "
        "the gold with its columns removed scores 173/178 (the five that cannot lose their "
        "columns compare two columns or test several per row). Strict match credits no "
        "coincidence."
    )
    deg = metrics.get("degenerate_gold")
    if deg:
        note += (
            f" {deg['items']} golds highlight no cell: under execution match any rule that "
            f"highlights nothing is right there; they hold {deg['top1_hits']} of the top-1 and "
            f"{deg['top5_hits']} of the top-5 hits of the first row."
        )
    return note


def nl2bash_metric(nb: dict[str, Any], n: int) -> str:
    """The metric column of an NL2Bash-comparable row."""
    return (
        f"template match, counted on the {nb['items']:,} items NL2Bash's evaluation can score, "
        f"over all {n:,} (ceiling {nb['ceiling']:.1f})"
    )


def nl2bash_beside_paper_note(results: list[dict[str, Any]]) -> str:
    """One paragraph saying that the paper's Bash numbers stand beside the NL2Bash-comparable
    figure, and for which results that figure is omitted (and why)."""
    note = (
        "The paper's Bash numbers stand beside the NL2Bash-comparable figure: they were "
        "probably computed with NL2Bash's official evaluation, which cannot template, or match "
        "to itself, the gold of some test items (under it a perfect model scores the ceiling "
        "shown, 79.1% on the full test split). Our template match scores every item."
    )
    omitted = [r for r in results if "omitted" in (r.get("nl2bash_comparable") or {})]
    for r in omitted:
        who = f" for {r['system']}" if "system" in r else ""
        note += f" NL2Bash-comparable figure omitted{who}: {r['nl2bash_comparable']['omitted']}."
    return note


def _write_outputs(
    out_dir: Path, records: list[dict[str, Any]], metrics: dict[str, Any], system: str
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "table.md").write_text(markdown_table(metrics, system))


def run_eval(
    generator: Any,
    lang: str,
    examples: Sequence[Example],
    out_dir: Path,
    system: str,
    k: int = 5,
    batch_size: int = 32,
    progress: bool = True,
    codebertscore: str | None = None,
    seed: int = 0,
    nl2bash: Nl2BashSubset | None = None,
    deadline: float | None = None,
    split: str = "test",
    **options: Any,
) -> dict[str, Any]:
    """Generate, score, and write predictions.jsonl, metrics.json and table.md to ``out_dir``.
    ``split``: which examples these are (``test``, or ``heldout``: the held-out share of the
    train split), written to metrics.json.
    ``nl2bash``: the items of Bash's NL2Bash-comparable figure (see :func:`find_nl2bash_subset`).
    ``deadline``: see :func:`generate_all`; the items generated before it are scored, and
    ``metrics["stopped_at_deadline"]`` says how many of how many."""
    t0 = time.perf_counter()
    candidates = generate_all(
        generator,
        examples,
        k=k,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        deadline=deadline,
        **options,
    )
    gen_s = time.perf_counter() - t0
    planned = len(examples)
    examples = examples[: len(candidates)]
    records, metrics = score(lang, examples, candidates, nl2bash)
    if len(examples) < planned:
        metrics["stopped_at_deadline"] = {"items": len(examples), "planned": planned}
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is not None:
        metrics.update(length_accuracy(tokenizer, examples, candidates))
    if codebertscore and lang == "python":
        add_codebertscore(metrics, records, codebertscore, k)
    metrics.update(
        system=system,
        split=split,
        generation_seconds=round(gen_s, 2),
        options={"k": k, "seed": seed, **options},
    )
    _write_outputs(out_dir, records, metrics, system)
    return metrics


# Written by the run, not by scoring: a re-score keeps them (CodeBERTScore needs the model
# directory and does not depend on the template or rule metrics).
_KEPT_ON_RESCORE = (
    "length_acc",
    "length_acc_top1",
    "codebertscore_f1_top1",
    "codebertscore_f1_best_of_k",
    "system",
    "split",
    "generation_seconds",
    "options",
    "stopped_at_deadline",
)


def rescore(
    out_dir: Path,
    splits: dict[str, Sequence[Example]],
    nl2bash: Nl2BashSubset | None = None,
) -> dict[str, Any]:
    """Score the candidates saved in ``out_dir/predictions.jsonl`` again with the current
    metrics, without generating: rewrites the per-item verdicts in predictions.jsonl,
    metrics.json and table.md, keeping the run's system name, options and generation time.

    ``splits`` holds the examples of each split the predictions may have been made on (CF needs
    each item's ``Data``): the one metrics.json names (``"split"``), else the one whose items
    the records are, in order (same ID and gold), as ``run`` writes them."""
    metrics_path, preds_path = out_dir / "metrics.json", out_dir / "predictions.jsonl"
    old = _read_json_object(metrics_path)
    lang = old.get("benchmark")
    if lang not in NAMES:
        raise UserError(f"{metrics_path}: no known benchmark (got {lang!r})")
    if not preds_path.is_file():
        raise UserError(f"{preds_path}: file not found")
    records: list[dict[str, Any]] = []
    with preds_path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                rec["candidates"] = [
                    Candidate(str(c["code"]), float(c["score"])) for c in rec["candidates"]
                ]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UserError(
                    f"{preds_path}:{line_no}: not a prediction record of `python -m eval run`"
                ) from None
            records.append(rec)

    def matches(examples: Sequence[Example]) -> bool:
        return len(records) <= len(examples) and all(
            r.get("id") == e.id and r.get("gold") == e.code
            for r, e in zip(records, examples, strict=False)
        )

    names = [old["split"]] if old.get("split") in splits else list(splits)
    split = next((name for name in names if matches(splits[name])), None)
    if split is None:
        raise UserError(
            f"{preds_path}: its items are not those of the {lang} data given "
            f"({', '.join(names)}): re-score with the data the predictions were made on"
        )
    examples = splits[split][: len(records)]
    candidates = [r["candidates"] for r in records]
    new_records, metrics = score(lang, examples, candidates, nl2bash if split == "test" else None)
    metrics.update({key: old[key] for key in _KEPT_ON_RESCORE if key in old})
    metrics.setdefault("split", split)
    system = str(metrics.get("system", out_dir.name))
    _write_outputs(out_dir, new_records, metrics, system)
    return metrics


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object")
    return doc
