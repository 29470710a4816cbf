"""An offline bundle: what a GPU node without internet needs beside the checkout.

    python bench/bundle.py [--data DIR] [--dest .offline] [--python 3.12] [--no-wheels]

Many GPU nodes (an interactive slot on a shared cluster, a preemptible queue) reach no package
index and see only the checkout. This fills an ignored folder inside it:

    .offline/data/benchmarks/{Bash,CFRule,Python}Benchmarks.json    the benchmark files
    .offline/data/pretraining/{BashSnippets,ConditionalFormattingSnippets}.txt
    .offline/data/pretraining/PythonSnippets.txt    the stdlib snippet corpus, built here
    .offline/data/nl2bash-official-defined.json     Bash's NL2Bash-comparable subset
    .offline/data/NOTICE.md                         the data's licence and source
    .offline/wheels/*.whl                           base packages a GPU image may lack
    .offline/source.json                            the commit it was prepared at

The Python snippet corpus is built from *this* interpreter's standard library and carried: built
on the node it would come from that node's Python (a different corpus, hence a different
tokenizer and pre-training data than the runs made here). ``source.json`` holds the git commit,
since a copied checkout may have no ``.git``; run.json says where its SHA came from. The folder
is added to ``.gitignore`` (never committed); its size is reported. On the node:
``pip install --no-index --find-links .offline/wheels bashlex`` and ``--data .offline/data``.
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

from codefusion.data import NL2BASH_DEFINED, resolve_data_dir  # noqa: E402
from codefusion.errors import UserError  # noqa: E402
from codefusion.languages import LANGUAGES  # noqa: E402

DEST = ".offline"
# Inside the bundled data folder: the Python snippet corpus (bench/reproduce.py reads it when
# present, instead of building one from the node's standard library).
PYTHON_CORPUS = Path("pretraining") / "PythonSnippets.txt"
# Base packages that GPU images with torch, transformers and lightning commonly lack.
WHEELS = ("bashlex==0.18",)
DEFAULT_PYTHON = "3.12"


class BundleError(UserError):
    """The bundle cannot be prepared (missing data, pip failed)."""


def pip_download(
    requirements: Sequence[str], dest: Path, python: str = DEFAULT_PYTHON
) -> list[Path]:
    """The wheels of ``requirements`` for CPython ``python`` on x86-64 Linux, no dependencies,
    binary only."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python, "--implementation", "cp"]
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"):
        cmd += ["--platform", plat]
    cmd += ["-d", str(dest), *requirements]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise BundleError(f"pip download {' '.join(requirements)} failed: {last}")
    return sorted(dest.glob("*.whl"))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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


def make_bundle(
    data_dir: str | Path | None = None,
    dest: str | Path = REPO / DEST,
    repo: Path = REPO,
    wheels: Sequence[str] = WHEELS,
    download: Callable[[Sequence[str], Path], list[Path]] | None = pip_download,
    python_corpus: Callable[[], list[str]] | None = None,
) -> dict[str, object]:
    """Fill ``dest`` (emptied first) and return a report of what it holds and its size.

    ``download`` fetches ``wheels`` into ``dest/wheels`` (None: no wheels); ``python_corpus``
    returns the snippet corpus (default: built from this interpreter's standard library).
    A ``BundleError`` for missing data."""
    from bench.environment import git_info
    from codefusion.pycorpus import build_python_corpus, write_corpus

    src = resolve_data_dir(data_dir)
    dest = Path(dest)
    files = [Path("benchmarks") / lang.benchmark_file for lang in LANGUAGES.values()]
    files += [Path("pretraining") / x.snippet_file for x in LANGUAGES.values() if x.snippet_file]
    files += [Path(NL2BASH_DEFINED), Path("NOTICE.md")]
    missing = [str(src / f) for f in files if not (src / f).is_file()]
    if missing:
        raise BundleError(f"missing from the data folder: {', '.join(missing)}")
    if dest.exists():
        shutil.rmtree(dest)
    data = dest / "data"
    for f in files:
        (data / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, data / f)
    snippets = (python_corpus or build_python_corpus)()
    write_corpus(snippets, data / PYTHON_CORPUS)
    got = download(list(wheels), dest / "wheels") if download is not None and wheels else []
    git = git_info(repo)
    source = {
        "git_sha": git["sha"],
        "git_tree": git.get("tree"),
        "dirty": git["dirty"],
        "python_corpus": {"python": platform.python_version(), "snippets": len(snippets)},
        "wheels": [w.name for w in got],
    }
    (dest / "source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return {
        "dest": str(dest),
        "bytes": folder_bytes(dest),
        "files": sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()),
        "python_snippets": len(snippets),
        "gitignore_added": ensure_ignored(repo, dest),
        **source,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/bundle.py",
        description="Copy the benchmark data, the Python snippet corpus and wheels of base "
        "packages into an ignored folder of the checkout, for a GPU node without internet "
        "(see README: Reproducing on one GPU). Example: python bench/bundle.py --data "
        "../shared/data/prose-codefusion",
    )
    p.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    p.add_argument("--dest", default=str(REPO / DEST), help=f"the folder to fill (default {DEST})")
    p.add_argument("--python", default=DEFAULT_PYTHON, help="the node's Python, for the wheels")
    p.add_argument("--no-wheels", action="store_true", help="do not download wheels (offline)")
    args = p.parse_args(argv)

    def download(reqs: Sequence[str], dest: Path) -> list[Path]:
        return pip_download(reqs, dest, args.python)

    try:
        report = make_bundle(args.data, args.dest, download=None if args.no_wheels else download)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in report["files"]:
        print(f"  {f}")
    print(
        f"{report['dest']}: {len(report['files'])} files, {report['bytes'] / 2**20:.1f} MiB; "
        f"Python snippets: {report['python_snippets']:,} (Python {platform.python_version()}); "
        f"commit {report['git_sha']}" + (" (dirty)" if report["dirty"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
