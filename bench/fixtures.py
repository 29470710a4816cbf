"""Miniature data in the benchmarks' published folder layout, written by the tests and the smoke check
(bench/smoke.py) alike: plain Python (json), no pytest, no real data."""

from __future__ import annotations

import json
from pathlib import Path

CF_CODES = [
    "GreaterThan(5)",
    "LessThan(10)",
    "Between(1, 9)",
    "TextContains(abc)",
    "Duplicate()",
    "Blanks()",
    "AND(GreaterThan(2), LessThan(8))",
    "Top(c[1], 3)",
]
CF_PROMPTS = [
    "cells greater than 5",
    "values less than 10",
    "between 1 and 9",
    "text containing abc",
    "duplicate values",
    "blank cells",
    "greater than 2 and less than 8",
    "top 3 sales",
]


def write_fixture_data(root: Path, n_repeat: int = 4) -> Path:
    """A miniature data folder in the published folder layout (CF benchmark + CF/Bash snippets)."""
    (root / "benchmarks").mkdir(parents=True, exist_ok=True)
    (root / "pretraining").mkdir(parents=True, exist_ok=True)
    table = [["Index", "Value"], [0, "3"], [1, "7"], [2, "abc"], [3, ""], [4, "12"]]
    rows = [
        {"ID": i, "NL Utterance": p, "Code": c, "Data": table, "Labels": [0]}
        for i, (p, c) in enumerate(zip(CF_PROMPTS * n_repeat, CF_CODES * n_repeat, strict=True))
    ]
    rows.append(
        {"ID": 999, "NL Utterance": None, "Code": "GreaterThan(1)", "Data": table, "Labels": [0]}
    )
    test = [dict(r, ID=1000 + i) for i, r in enumerate(rows[:8])]
    test.append(
        {"ID": 2000, "NL Utterance": None, "Code": "LessThan(3)", "Data": table, "Labels": [0]}
    )
    (root / "benchmarks" / "CFRuleBenchmarks.json").write_text(
        json.dumps({"train": rows, "test": test})
    )
    (root / "pretraining" / "ConditionalFormattingSnippets.txt").write_text(
        "\n".join(CF_CODES * 3) + "\n"
    )
    (root / "pretraining" / "BashSnippets.txt").write_text(
        "ls -la\nfind . -name '*.py'\ngrep -r foo .\n"
    )
    bash = [{"ID": i, "NL Utterance": f"list files {i}\n", "Code": "ls -la\n"} for i in range(4)]
    (root / "benchmarks" / "BashBenchmarks.json").write_text(
        json.dumps({"train": bash, "test": bash})
    )
    py = [{"ID": i, "NL Utterance": "add one", "Code": "x + 1"} for i in range(4)]
    py.append({"ID": 9, "NL Utterance": None, "Code": "y = 2"})
    (root / "benchmarks" / "PythonBenchmarks.json").write_text(
        json.dumps({"train": py, "test": py})
    )
    return root
