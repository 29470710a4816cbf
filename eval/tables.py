"""Combined tables for all benchmarks and systems, and a quality-vs-diversity plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codefusion.errors import UserError
from codefusion.scoring.paper import BESIDE_PAPER, PAPER_TOPK
from eval.harness import figure_label, figures_note, nl2bash_beside_paper_note, nl2bash_metric


def result_dirs(dirs: list[Path], needs: str = "metrics.json", repair: bool = False) -> list[Path]:
    """Result folders: each folder given that holds ``needs`` (and metrics.json, or with
    ``repair`` a repair table's repair.json), else its subfolders that do (one level down)."""
    found = []

    def holds(d: Path) -> bool:
        return _holds(d, needs) or (repair and (d / "repair.json").is_file())

    for d in dirs:
        subdirs = sorted(d.iterdir()) if d.is_dir() else []
        here = [d] if holds(d) else [x for x in subdirs if x.is_dir() and holds(x)]
        if not here:
            raise UserError(f"{d}: no {needs} found")
        found.extend(here)
    return found


def _holds(d: Path, needs: str) -> bool:
    return (d / "metrics.json").is_file() and (d / needs).is_file()


def load_results(dirs: list[Path]) -> list[dict[str, Any]]:
    """metrics.json of each result folder (a folder may also hold result folders one level down)."""
    found = []
    for d in result_dirs(dirs):
        f = d / "metrics.json"
        try:
            found.append(json.loads(f.read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"{f}: malformed JSON ({e.msg})") from None
    return found


def combined_markdown(results: list[dict[str, Any]]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    out = [
        "| benchmark | system | metric | top-1 | top-3 | top-5 | valid top-1 | unique@5 | distinct-4 | edit dist. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for b in ("python", "bash", "cf"):
        rows = [r for r in results if r["benchmark"] == b]
        for r in rows:
            d = r["diversity"]
            out.append(
                f"| {b} | {r['system']} | {r['metric']} | {fmt(r['top1'])} | {fmt(r['top3'])} | {fmt(r['top5'])} "
                f"| {fmt(r['valid_top1'])} | {d['unique@k']:.2f} | {d['distinct-4']:.2f} "
                f"| {d['mean_pairwise_edit_distance']:.2f} |"
            )
            nb = r.get("nl2bash_comparable") or {}
            if "top1" in nb:
                out.append(
                    f"| {b} | {r['system']} (NL2Bash-comparable) | {nl2bash_metric(nb, r['n'])} "
                    f"| {fmt(nb['top1'])} | {fmt(nb['top3'])} | {fmt(nb['top5'])} | | | | |"
                )
            for name, fig in (r.get("figures") or {}).items():
                out.append(
                    f"| {b} | {r['system']} ({figure_label(name, b)}) | {fig['metric']} "
                    f"| {fmt(fig['top1'])} | {fmt(fig['top3'])} | {fmt(fig['top5'])} | | | | |"
                )
        if rows and BESIDE_PAPER.get(b) == "nl2bash_comparable":
            notes.append(nl2bash_beside_paper_note(rows))
        if any(r.get("figures") for r in rows):
            notes.append(figures_note({}))
        if rows:
            paper = PAPER_TOPK[b]
            for name, p in paper.items():
                if name != "metric":
                    out.append(
                        f"| {b} | {name} (paper, {p['tag']}) | {paper['metric']} | {fmt(p['top1'])} "
                        f"| {fmt(p['top3'])} | {fmt(p['top5'])} | | | | |"
                    )
    return "\n".join(out + [line for note in notes for line in ("", note)]) + "\n"


def quality_diversity_plot(results: list[dict[str, Any]], path: Path) -> None:
    """Top-5 accuracy against mean pairwise edit distance, one point per (system, benchmark)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    markers = {"python": "o", "bash": "s", "cf": "^"}
    for r in results:
        x, y = r["diversity"]["mean_pairwise_edit_distance"], r["top5"]
        ax.scatter(x, y, marker=markers[r["benchmark"]], s=60)
        ax.annotate(
            f"{r['system']} / {r['benchmark']}",
            (x, y),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel("diversity of the top-5 (mean pairwise normalised edit distance)")
    ax.margins(x=0.35, y=0.1)  # room for the labels
    ax.set_ylabel("top-5 accuracy (%)")
    ax.set_title("Quality vs diversity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
