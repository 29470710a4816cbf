"""A Python pre-training snippet corpus built from the running interpreter's standard library.

The published CodeFusion data has no Python snippet file, so we build one from source that is on
every machine: single-line simple statements (assignments, calls, returns, imports, ...) of the
standard library, docstrings dropped, at most ``max_chars`` characters (about the 128-token
canvas), deduplicated, in a deterministic order (sorted file paths, then source order).
"""

from __future__ import annotations

import ast
import sysconfig
import warnings
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

# Simple statements only: a compound statement (def, for, if ...) does not fit on one line.
_SIMPLE = (
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Expr,
    ast.Return,
    ast.Import,
    ast.ImportFrom,
    ast.Raise,
    ast.Assert,
    ast.Delete,
)
# Test suites are huge and odd (deliberate syntax torture): leave them out.
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Sorted .py files of the standard library (test suites and site-packages excluded)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not _SKIP_PARTS & set(p.relative_to(root).parts))


def snippets_from_source(source: str, max_chars: int = 200) -> Iterable[str]:
    """Single-line simple statements of one module, in source order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        tree = ast.parse(source)
    lines = source.splitlines()
    nodes = [n for n in ast.walk(tree) if isinstance(n, _SIMPLE)]
    nodes.sort(key=lambda n: (n.lineno, n.col_offset))
    for node in nodes:
        if node.lineno != node.end_lineno:
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstrings and bare constants
        # ast offsets count UTF-8 bytes, not characters.
        line = lines[node.lineno - 1].encode("utf-8")
        text = line[node.col_offset : node.end_col_offset].decode("utf-8", "replace").strip()
        if text and len(text) <= max_chars:
            yield text


def build_python_corpus(
    root: Path | None = None, max_chars: int = 200, progress: bool = False
) -> list[str]:
    """Deduplicated snippets of the standard library under ``root`` (default: this Python's)."""
    seen: dict[str, None] = {}
    files = stdlib_files(root)
    for path in tqdm(files, desc="stdlib", unit="file", disable=not progress):
        try:
            source = path.read_text(encoding="utf-8")
            for s in snippets_from_source(source, max_chars):
                seen.setdefault(s, None)
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
            continue  # a file this Python cannot parse is simply not used
    return list(seen)


def write_corpus(snippets: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(s + "\n" for s in snippets), encoding="utf-8")
