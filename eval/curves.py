"""Curves: quality against sampling steps for one model, and held-out quality against training
steps for several runs (read from their Lightning CSV logs).

    python -m eval steps-curve --model DIR --benchmark cf --steps 1 10 100 1200 --out D
    python -m eval steps-plot results/a results/b --labels A B --out F.png   # curves side by side
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


_CURVE_METRICS = {"top1": "top-1", "top5": "top-5", "valid_top1": "valid top-1"}


def steps_plot(
    curve_dirs: Sequence[Path],
    labels: Sequence[str],
    out: Path,
    metrics: Sequence[str] = ("top1", "top5"),
) -> dict[str, Any]:
    """Several models' ``steps-curve`` results in one plot (no generation: each folder's
    ``curve.json``), e.g. continuous and masked diffusion against their sampling steps."""
    if len(labels) != len(curve_dirs):
        raise UserError("give one label per curve folder")
    unknown = sorted(set(metrics) - set(_CURVE_METRICS))
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}: choose from {', '.join(_CURVE_METRICS)}")
    series, data = {}, {}
    for label, d in zip(labels, curve_dirs, strict=True):
        path = Path(d) / "curve.json"
        try:
            rows = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: cannot read a steps curve ({e})") from None
        data[label] = rows
        for m in metrics:
            series[f"{label} {_CURVE_METRICS[m]}"] = (
                [r["steps"] for r in rows],
                [r[m] for r in rows],
            )
    _plot(
        out,
        series,
        xlabel="sampling steps (network calls per draw)",
        ylabel="%",
        logx=True,
        title="quality vs sampling steps",
    )
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return data


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
