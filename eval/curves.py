"""Curves: quality against sampling steps for one model, and held-out quality against training
steps for several runs (read from their Lightning CSV logs).

    python -m eval steps-curve --model DIR --benchmark cf --steps 1 10 100 1200 --out D
    python -m eval training-curves runs/a/finetune runs/b/finetune --labels A B --out F.png
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codefusion.errors import UserError


def steps_curve(
    generator: Any,
    examples: Sequence[Any],
    lang: str,
    steps: Sequence[int],
    out: Path,
    seed: int = 0,
    **options: Any,
) -> list[dict[str, Any]]:
    """Generation diagnostics at each number of sampling steps; ``curve.json`` + ``curve.png``."""
    from tqdm import tqdm

    from codefusion.scoring.evaluate import generation_diagnostics

    rows = []
    for s in tqdm(list(steps), desc="steps", unit="setting"):
        d = generation_diagnostics(generator, examples, lang, seed=seed, steps=s, **options)
        rows.append({"steps": s, **d})
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    _plot(
        out / "curve.png",
        {
            "top-1": ([r["steps"] for r in rows], [r["top1"] for r in rows]),
            "top-5": ([r["steps"] for r in rows], [r["top5"] for r in rows]),
            "valid top-1": ([r["steps"] for r in rows], [r["valid_top1"] for r in rows]),
        },
        xlabel="sampling steps (CodeFusion: DDIM respaced from T = 1200; masked: unmasking steps)",
        ylabel="%",
        logx=True,
        title=f"{lang}: quality vs sampling steps ({len(examples)} items)",
    )
    return rows


def read_metric(run_stage_dir: Path, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric from a stage's ``logs/version_*/metrics.csv``."""
    files = sorted(Path(run_stage_dir).glob("logs/version_*/metrics.csv"))
    if not files:
        raise UserError(f"{run_stage_dir}: no logs/version_*/metrics.csv")
    xs, ys = [], []
    with files[-1].open(newline="") as f:
        for row in csv.DictReader(f):
            v = row.get(metric)
            if v not in (None, ""):
                xs.append(int(row["step"]) + 1)
                ys.append(float(v))
    return xs, ys


def training_curves(
    stage_dirs: Sequence[Path], labels: Sequence[str], out: Path, metric: str = "val/top5"
) -> dict[str, Any]:
    """``metric`` against training steps for each run, one plot (and the numbers as JSON)."""
    if len(labels) != len(stage_dirs):
        raise UserError("give one label per run")
    series = {lab: read_metric(d, metric) for lab, d in zip(labels, stage_dirs, strict=True)}
    _plot(
        out,
        series,
        xlabel="fine-tuning step",
        ylabel=f"held-out {metric.split('/')[-1]} (%)",
        title=f"held-out {metric} during fine-tuning",
    )
    data = {lab: {"steps": xs, "values": ys} for lab, (xs, ys) in series.items()}
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def _plot(path: Path, series: dict, xlabel: str, ylabel: str, title: str, logx=False) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the numbers are written anyway
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
