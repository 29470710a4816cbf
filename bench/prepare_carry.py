"""Prepare the folder that travels to the GPU machine with the checkout: `.carry/`.

    python bench/prepare_carry.py [--data DIR] [--dest .carry] [--no-wheels]

Only the checkout travels to the GPU machine (not ``../shared``), and nothing can be fetched
there, so this copies into an ignored folder inside the checkout what the reproduction needs
beside the code:

    .carry/data/benchmarks/{Bash,CFRule,Python}Benchmarks.json    the benchmark files
    .carry/data/pretraining/{BashSnippets,ConditionalFormattingSnippets}.txt
    .carry/data/pretraining/PythonSnippets.txt    the stdlib snippet corpus, built here
    .carry/data/nl2bash-official-defined.json     Bash's NL2Bash-comparable subset
    .carry/data/NOTICE.md                         the data's licence and source
    .carry/wheels/bashlex-0.18-py2.py3-none-any.whl   what the GPU image lacks
    .carry/source.json                            the commit it was prepared at

The Python snippet corpus is built from *this* interpreter's standard library and carried:
built there it would come from Python 3.12's (a different corpus, hence a different
tokenizer and different pre-training data than the CPU runs). ``source.json`` holds the git
commit, because the GPU machine's copy of the checkout may have no ``.git``; run.json says
where its SHA came from. The folder is added to ``.gitignore`` (it must never be committed)
and its size is checked: the checkout and it travel together, 64 MiB at most.

Wheels are fetched with pip for the GPU image's Python 3.12 (``--only-binary=:all:``, no
dependencies: bashlex has none on Python 3); ``--no-wheels`` skips it (no network).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

from codefusion.data import BENCHMARKS, NL2BASH_DEFINED, SNIPPETS, resolve_data_dir  # noqa: E402
from codefusion.errors import UserError  # noqa: E402

DEST = ".carry"
# Inside the carried data folder: the Python snippet corpus (bench/reproduce.py reads it when
# present, instead of building one from the GPU machine's standard library).
PYTHON_CORPUS = Path("pretraining") / "PythonSnippets.txt"
# What the GPU image lacks (its package list: /work/.library/device/KINDS.md).
WHEELS = ("bashlex==0.18",)
WHEEL_PYTHON = "3.12"
# What travels: the checkout and this folder together, at most 64 MiB.
LIMIT_BYTES = 64 * 2**20


class CarryError(UserError):
    """The carry folder cannot be prepared (missing data, too large, pip failed)."""


def pip_download(requirements: Sequence[str], dest: Path) -> list[Path]:
    """The wheels of ``requirements`` for the GPU image (CPython 3.12, x86-64 Linux), no
    dependencies, binary only (the device README's recipe)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", WHEEL_PYTHON, "--implementation", "cp"]
    for plat in (
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "any",
    ):
        cmd += ["--platform", plat]
    cmd += ["-d", str(dest), *requirements]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise CarryError(f"pip download {' '.join(requirements)} failed: {last}")
    return sorted(dest.glob("*.whl"))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def checkout_bytes(repo: Path) -> int | None:
    """Bytes of what travels besides the carry folder: tracked files and untracked ones git
    does not ignore (None without git)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = [repo / f for f in out.decode("utf-8", "replace").split("\0") if f]
    return sum(f.stat().st_size for f in files if f.is_file())


def ensure_ignored(repo: Path, dest: Path) -> bool:
    """Add ``/<dest>/`` to the checkout's .gitignore unless it is listed; True if added."""
    try:
        rel = dest.resolve().relative_to(repo.resolve())
    except ValueError:
        return False  # outside the checkout: nothing to ignore
    line = f"/{rel.as_posix()}/"
    gitignore = repo / ".gitignore"
    text = gitignore.read_text(encoding="utf-8") if gitignore.is_file() else ""
    if line in text.splitlines():
        return False
    sep = "" if not text or text.endswith("\n") else "\n"
    gitignore.write_text(f"{text}{sep}{line}\n", encoding="utf-8")
    return True


def git_source(repo: Path) -> dict[str, object]:
    """The commit the folder is prepared at, and whether the working tree differed from it."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def prepare_carry(
    data_dir: str | Path | None = None,
    dest: str | Path = REPO / DEST,
    repo: Path = REPO,
    wheels: Sequence[str] = WHEELS,
    download: Callable[[Sequence[str], Path], list[Path]] | None = pip_download,
    python_corpus: Callable[[], list[str]] | None = None,
    limit_bytes: int = LIMIT_BYTES,
) -> dict[str, object]:
    """Fill ``dest`` (emptied first) and return a report of what it holds and its size.

    ``download`` fetches ``wheels`` into ``dest/wheels`` (None: no wheels); ``python_corpus``
    returns the snippet corpus (default: built from this interpreter's standard library).
    A ``CarryError`` for missing data or a folder that would not travel."""
    from codefusion.pycorpus import build_python_corpus, write_corpus

    src = resolve_data_dir(data_dir)
    dest = Path(dest)
    files = [Path("benchmarks") / name for name in BENCHMARKS.values()]
    files += [Path("pretraining") / name for name in SNIPPETS.values()]
    files += [Path(NL2BASH_DEFINED), Path("NOTICE.md")]
    missing = [str(src / f) for f in files if not (src / f).is_file()]
    if missing:
        raise CarryError(f"missing from the data folder: {', '.join(missing)}")
    if dest.exists():
        shutil.rmtree(dest)
    data = dest / "data"
    for f in files:
        (data / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, data / f)
    snippets = (python_corpus or build_python_corpus)()
    write_corpus(snippets, data / PYTHON_CORPUS)
    got: list[Path] = []
    if download is not None and wheels:
        got = download(list(wheels), dest / "wheels")
    source = {
        **git_source(repo),
        "python_corpus": {"python": platform.python_version(), "snippets": len(snippets)},
        "wheels": [w.name for w in got],
    }
    (dest / "source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    added = ensure_ignored(repo, dest)
    size = folder_bytes(dest)
    tree = checkout_bytes(repo)
    report = {
        "dest": str(dest),
        "bytes": size,
        "checkout_bytes": tree,
        "files": sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()),
        "python_snippets": len(snippets),
        "gitignore_added": added,
        **source,
    }
    total = size + (tree or 0)
    if total > limit_bytes:
        raise CarryError(
            f"{dest} holds {size / 2**20:.1f} MiB and the checkout {(tree or 0) / 2**20:.1f} "
            f"MiB: together more than the {limit_bytes / 2**20:.0f} MiB that travel"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/prepare_carry.py",
        description="Copy the benchmark data, the Python snippet corpus and the wheels the GPU "
        "image lacks into an ignored folder of the checkout, which travels to the GPU machine "
        "with it (see README: Reproducing on one GPU).",
    )
    p.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    p.add_argument("--dest", default=str(REPO / DEST), help="the folder to fill (default .carry)")
    p.add_argument("--no-wheels", action="store_true", help="do not download wheels (offline)")
    args = p.parse_args(argv)
    try:
        report = prepare_carry(
            args.data, args.dest, download=None if args.no_wheels else pip_download
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in report["files"]:
        print(f"  {f}")
    mib = report["bytes"] / 2**20
    tree = report["checkout_bytes"]
    together = (
        "" if tree is None else f"; with the checkout {(report['bytes'] + tree) / 2**20:.1f} MiB"
    )
    print(
        f"{report['dest']}: {len(report['files'])} files, {mib:.1f} MiB{together} "
        f"(limit {LIMIT_BYTES / 2**20:.0f} MiB); Python snippets: {report['python_snippets']:,} "
        f"(Python {platform.python_version()}); commit {report['git_sha']}"
        + (" (dirty)" if report["dirty"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
