"""The import graph: strict layers (library < training < evaluation < benchmarks), no cycle,
and nothing imported from the tests. Every import counts, the ones inside functions too: a lazy
import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"codefusion": 0, "train": 1, "eval": 2, "bench": 3}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """The import statements under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    out: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(n for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` names a.b.c when that is a
    module, else a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for top in (*LAYERS, "tests") for p in (REPO / top).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def test_no_upward_import_and_none_from_the_tests():
    bad = []
    for mod, deps in _graph().items():
        if _layer(mod) is None:
            continue  # the tests may import anything
        for dep in deps:
            if dep.split(".")[0] == "tests" or (_layer(dep) or 0) > _layer(mod):
                bad.append(f"{mod} -> {dep}")
    assert not bad, bad


def test_no_import_cycle():
    graph = {m: {d for d in deps if _layer(d) is not None} for m, deps in _graph().items()}
    graph = {m: deps for m, deps in graph.items() if _layer(m) is not None}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, cycles


def test_no_module_over_500_lines_but_the_bash_metric_and_the_cf_interpreter():
    allowed = {"codefusion/scoring/metrics/bash.py", "codefusion/scoring/metrics/cf_interpreter.py"}
    long = []
    for top in LAYERS:
        for p in (REPO / top).rglob("*.py"):
            rel = p.relative_to(REPO).as_posix()
            n = len(p.read_text(encoding="utf-8").splitlines())
            if n > 500 and rel not in allowed:
                long.append(f"{rel}: {n} lines")
    assert not long, long
