"""The result files of a budgeted run, and their checks: ``run.json`` written last, a note under
the harness's ``table.md`` saying what the budget bought, every file read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.budget import Budget

OUTPUTS = ("metrics.json", "table.md", "predictions.jsonl", "run.json")


def check_outputs(out: Path, names=OUTPUTS) -> dict[str, int]:
    """Bytes of each result file; a ``RuntimeError`` for a missing or unreadable one
    (metrics.json and run.json must hold their documented keys)."""
    sizes: dict[str, int] = {}
    for name in names:
        path = out / name
        if not path.is_file():
            raise RuntimeError(f"{path} was not written")
        sizes[name] = path.stat().st_size
    required = {
        "metrics.json": ("benchmark", "metric", "n", "top1", "top3", "top5", "options"),
        "run.json": RUN_KEYS,
    }
    for name, keys in required.items():
        if name in names:
            doc = json.loads((out / name).read_text(encoding="utf-8"))
            lacking = [k for k in keys if k not in doc]
            if lacking:
                raise RuntimeError(f"{out / name} lacks {', '.join(lacking)}")
    with (out / "predictions.jsonl").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if not {"id", "prompt", "gold", "candidates", "correct"} <= set(rec):
                raise RuntimeError(f"{out / 'predictions.jsonl'}: a record lacks its keys")
    return sizes


RUN_KEYS = (
    "command",
    "git",
    "environment",
    "benchmark",
    "system",
    "architecture",
    "preset",
    "parameters",
    "config",
    "budget",
    "setup_s",
    "stages",
    "eval",
    "elapsed_s",
    "ended_inside_budget",
    "outputs",
)


def table_note(run: dict[str, Any]) -> str:
    """The lines table.md gets under the harness's table: what the budget bought."""
    b, ev = run["budget"], run["eval"]
    stages = []
    for name, label in (("pretrain", "pre-training"), ("finetune", "fine-tuning")):
        st = run["stages"].get(name)
        if st:
            tps = st.get("tokens_per_s")
            mfu = st.get("mfu")
            stages.append(
                f"{label} {st['steps']:,} steps of batch {st['batch_size']}"
                + (
                    f" ({st['rows_per_step']:g} rows: the whole set)"
                    if st.get("rows_per_step") and st["rows_per_step"] < st["batch_size"]
                    else ""
                )
                + f" in {st['wall_s']:.0f} s"
                + (f" ({tps:,.0f} code tokens/s" if tps else " (")
                + (f", MFU {100 * mfu:.1f}%)" if mfu is not None else ")")
            )
    steps = f"at {ev['steps']} sampling steps" if ev["steps"] is not None else "by beam search"
    items = (
        f"all {ev['items']} test items"
        if ev["complete"]
        else f"the first {ev['items']} of {ev['test_items']} test items (no more fitted)"
    )
    inside = "inside" if run["ended_inside_budget"] else "OVER"
    split = "/".join(
        f"{100 * b['split'][k]:.0f}" for k in ("pretrain", "finetune", "eval", "margin")
    )
    return (
        f"\nBudgeted run (bench/reproduce.py, {run['environment']['device']}): "
        f"{b['minutes']:g}-minute budget, split pre-training/fine-tuning/evaluation/margin "
        f"{split}%; "
        f"{'; '.join(stages)}; evaluation of {items} {steps} in {ev['wall_s']:.0f} s; "
        f"{run['elapsed_s'] / 60:.1f} minutes in all, {inside} the budget. "
        "The paper trains far longer: these numbers are what this budget reaches.\n"
    )


def finish(run: dict[str, Any], out: Path, budget: Budget) -> None:
    """table.md's note, then run.json (written last, with the elapsed time so far and the
    sizes of the other three files), then every file checked (:func:`check_outputs`)."""
    run["elapsed_s"] = round(budget.elapsed(), 2)
    run["ended_inside_budget"] = run["elapsed_s"] <= budget.seconds
    with (out / "table.md").open("a", encoding="utf-8") as f:
        f.write(table_note(run))
    run["outputs"] = {n: (out / n).stat().st_size for n in OUTPUTS if n != "run.json"}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    check_outputs(out)
