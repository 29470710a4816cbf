"""`python -m eval ablation PLAN`: train and score a sequence of configurations, one table.

A plan (YAML) names a base run config, the evaluation settings and the rows. Each row is the
previous row plus its own changes (``inherit: NAME`` starts from another row instead, ``inherit:
null`` from the base), so the table reads as "one change added on top of the previous":

    base: configs/cf-small-cpu.yaml
    benchmark: cf
    eval: {steps: 100, draws: 10}
    rows:
      - name: literal
        label: the paper's objective
        both: {decoder_input: x0_hat}        # set in pretrain and finetune
      - name: d-clean
        label: + D trained on L(y)
        both: {decoder_input: clean}
        set: [finetune.max_steps=900]        # any --set override
        generate: {length: predicted}        # generation options of this row (inherited)
      - name: votes
        label: d-clean, ranked by votes
        reuse_model: true                    # no training: the parent row's model, new options
        generate: {rank: votes}

A plan-level ``set`` applies to every row (before the rows' own). A row with
``retired: COMMIT`` used an option removed since (the commit has it): its saved
results are tabulated, nothing is trained or run for it.

For every row: train (skipped when ``<out>/<name>/model`` exists), then score the held-out share
of the train split (settings are chosen on it) and the test split, each once, with the same
seed and options. Results: ``<out>/<name>/{heldout,test}/`` (predictions, metrics, table) and
``<out>/ablation.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from codefusion.errors import UserError


class PlanError(UserError):
    """An ablation plan is invalid."""


def load_plan(path: Path) -> dict[str, Any]:
    try:
        plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PlanError(f"{path}: cannot read the plan ({e})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("rows"), list) or not plan["rows"]:
        raise PlanError(f"{path}: a plan needs 'base' and a non-empty list 'rows'")
    for key in ("base", "benchmark"):
        if key not in plan:
            raise PlanError(f"{path}: missing '{key}'")
    names = [r.get("name") for r in plan["rows"]]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise PlanError(f"{path}: every row needs a distinct 'name'")
    return plan


def resolve_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row's full list of overrides and generation options, inheritance applied."""
    done: dict[str, dict[str, Any]] = {}
    prev: str | None = None
    out = []
    for row in plan["rows"]:
        parent = row.get("inherit", prev)
        if parent is not None and parent not in done:
            raise PlanError(f"row {row['name']}: inherits from unknown row {parent!r}")
        base = (
            done[parent]
            if parent is not None
            else {"set": list(plan.get("set") or []), "generate": {}}
        )
        sets = list(base["set"])
        for key, value in (row.get("both") or {}).items():
            for stage in ("pretrain", "finetune"):
                sets.append(f"{stage}.{key}={json.dumps(value)}")
        sets += list(row.get("set") or [])
        gen = {**base["generate"], **(row.get("generate") or {})}
        full = {"name": row["name"], "label": row.get("label", row["name"]), "set": sets}
        if row.get("retired"):
            full["retired"] = str(row["retired"])
        full["generate"] = gen
        full["model_of"] = row["name"]
        if row.get("reuse_model"):
            if parent is None or row.get("both") or row.get("set"):
                raise PlanError(
                    f"row {row['name']}: reuse_model evaluates its parent's model with other "
                    "generation options; it needs a parent and no training changes"
                )
            full["model_of"] = base["model_of"]
        done[row["name"]] = full
        out.append(full)
        prev = row["name"]
    return out


def _eval_args(options: dict[str, Any]) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (None, False):
            args += [flag, str(value)]
    return args


def run_plan(
    plan_path: Path, out: Path, only: list[str] | None = None, data: str | None = None
) -> Path:
    plan = load_plan(plan_path)
    rows = resolve_rows(plan)
    bench, ev = plan["benchmark"], dict(plan.get("eval") or {})
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if (only and row["name"] not in only) or row.get("retired"):
            continue
        run_name = f"{plan.get('prefix', 'ablation')}-{row['model_of']}"
        model = Path("runs") / run_name / "model"
        if not model.is_dir():
            cmd = [sys.executable, "-m", "train", "--config", plan["base"], "--no-progress"]
            cmd += ["--set", f"name={run_name}"]
            for s in row["set"]:
                cmd += ["--set", s]
            if data:
                cmd += ["--data", data]
            _call(cmd)
        (out / row["name"]).mkdir(parents=True, exist_ok=True)
        (out / row["name"] / "row.json").write_text(json.dumps(row, indent=2) + "\n")
        for split in ("heldout", "test"):
            dest = out / row["name"] / split
            if (dest / "metrics.json").is_file():
                continue
            cmd = [sys.executable, "-m", "eval", "run", "--model", str(model)]
            cmd += ["--benchmark", bench, "--split", split, "--out", str(dest)]
            if split == "heldout":
                cmd += _holdout_args(plan["base"], row["set"])
            cmd += ["--system", row["label"]]
            cmd += _eval_args({**ev, **row["generate"]})
            if data:
                cmd += ["--data", data]
            _call(cmd)
    table = ablation_table(out, rows)
    (out / "ablation.md").write_text(table)
    return out / "ablation.md"


def _holdout_args(base: str, overrides: list[str]) -> list[str]:
    """The held-out share a row's training kept out: its seed and fraction, so that a row with
    another training seed is scored on its own held-out programs, never on ones it trained on."""
    from train.config import load_run_config

    cfg = load_run_config(base, list(overrides))
    fraction = cfg.finetune.val_fraction
    return ["--holdout-seed", str(cfg.seed), "--holdout-fraction", str(fraction)]


def _call(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise PlanError(f"command failed ({proc.returncode}): {' '.join(cmd)}")


def ablation_table(out: Path, rows: list[dict[str, Any]]) -> str:
    """One line per row: test top-1/3/5 under each figure (for CF: execution match,
    selection-applied, strict), valid top-1, length accuracy, unique@5; held-out top-5 under
    each figure and held-out valid top-1."""
    sample = next((m for r in rows if (m := _metrics(out / r["name"] / "test")) is not None), {})
    figures = ["main", *(sample.get("figures") or {})]
    names = {"main": "exec" if sample.get("benchmark") == "cf" else "main"}
    head = " / ".join(names.get(f, f.replace("_", "-")) for f in figures)
    lines = [
        f"| row | change | test top-1/3/5 ({head}) | valid top-1 | length acc. | unique@5 "
        f"| held-out top-5 ({head}) | held-out valid |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def f(v: float | None, digits: int = 1) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    def figure(m: dict | None, name: str) -> dict:
        if m is None:
            return {}
        return m if name == "main" else (m.get("figures") or {}).get(name, {})

    for row in rows:
        t = _metrics(out / row["name"] / "test")
        h = _metrics(out / row["name"] / "heldout")
        if t is None and h is None:
            continue
        test = " / ".join(
            "/".join(f(figure(t, name).get(f"top{k}")) for k in (1, 3, 5)) for name in figures
        )
        held = " / ".join(f(figure(h, name).get("top5")) for name in figures)
        unique = f(t["diversity"]["unique@k"], 2) if t else "–"
        label = row["label"] + (
            f" (retired: ran at {row['retired']})" if row.get("retired") else ""
        )
        lines.append(
            f"| {row['name']} | {label} | {test} | {f((t or {}).get('valid_top1'))} "
            f"| {f((t or {}).get('length_acc'))} | {unique} | {held} "
            f"| {f((h or {}).get('valid_top1'))} |"
        )
    return "\n".join(lines) + "\n"


def _metrics(d: Path) -> dict[str, Any] | None:
    p = d / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else None
