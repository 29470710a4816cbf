"""Benchmark and pre-training data: where it lives, how it is read, what is kept.

The published files (microsoft/prose-benchmarks, folder CodeFusion, CC BY-SA 4.0) are read in
place from a data folder given by a flag or the ``CODEFUSION_DATA`` environment variable:

    <data>/benchmarks/{Bash,CFRule,Python}Benchmarks.json   {"train": [...], "test": [...]}
    <data>/pretraining/{BashSnippets,ConditionalFormattingSnippets}.txt

Which file is whose is said in the language registry (:mod:`codefusion.languages`). The
held-out share that settings are chosen on is a part of the *train* split
(:func:`holdout_examples`); the test split is read only by evaluation.

Row policy (one per split, never a crash):
- **train**: rows with a null/blank prompt or empty code are skipped, and so are CF rows whose
  gold rule does not parse (garbled script text); the counts are returned and logged.
- **test**: every row is kept, so the denominator stays the paper's. A null prompt becomes the
  empty string (the model then generates unconditionally from an empty prompt).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codefusion.errors import UserError
from codefusion.languages import UnknownLanguage, language

log = logging.getLogger(__name__)

# In the data folder beside benchmarks/: the Bash test items NL2Bash's official evaluation can
# score (see load_nl2bash_defined).
NL2BASH_DEFINED = "nl2bash-official-defined.json"
SPLITS = ("train", "test")
DATA_ENV = "CODEFUSION_DATA"


class DataError(UserError):
    """A data file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Example:
    """One benchmark item. ``data``/``labels`` are only set for CF rules."""

    id: int | str
    prompt: str
    code: str
    data: list[list[Any]] | None = None
    labels: list[int] | None = None


@dataclass
class LoadReport:
    """What a load kept and what it skipped, by reason."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"kept {self.kept}, skipped: {skipped}"


BUILTIN = Path(__file__).parent / "builtin_data"  # the CF files, xz-compressed (NOTICE.md)
BUILTIN_FILES = {
    "CFRuleBenchmarks.json.xz": Path("benchmarks") / "CFRuleBenchmarks.json",
    "ConditionalFormattingSnippets.txt.xz": Path("pretraining")
    / "ConditionalFormattingSnippets.txt",
}
DOWNLOAD_CACHE = Path.home() / ".cache" / "codefusion" / "data"  # `codefusion download`'s
_said: set[Path] = set()


def builtin_data_dir() -> Path:
    """The CF rule benchmark and snippets that ship with the package, unpacked once into a cache
    folder (a temporary one where the home folder is not writable)."""
    import hashlib
    import lzma
    import tempfile

    digest = hashlib.sha256(b"".join((BUILTIN / n).read_bytes() for n in BUILTIN_FILES))
    for root in (Path.home() / ".cache" / "codefusion", Path(tempfile.gettempdir())):
        dest = root / f"builtin-{digest.hexdigest()[:12]}"
        try:
            for packed, rel in BUILTIN_FILES.items():
                target = dest / rel
                if not target.is_file():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_bytes(lzma.decompress((BUILTIN / packed).read_bytes()))
                    os.replace(tmp, target)
            return dest
        except OSError:
            continue
    raise DataError("cannot unpack the built-in CF data: no writable cache or temporary folder")


def resolve_data_dir(path: str | os.PathLike | None = None, lang: str | None = None) -> Path:
    """The data folder: the explicit path, else ``$CODEFUSION_DATA``, else `codefusion
    download`'s cache, else (for CF, or when no benchmark is named) the CF files built into the
    package, said once in a log line; a one-line error naming both ways to get the rest."""
    chosen = path or os.environ.get(DATA_ENV)
    if chosen:
        p = Path(chosen).expanduser()
        if not p.is_dir():
            raise DataError(f"data folder {p} does not exist")
        return p
    if (DOWNLOAD_CACHE / "benchmarks").is_dir():
        return DOWNLOAD_CACHE
    if lang not in (None, "cf"):
        raise DataError(
            f"no data folder for the {lang} benchmark (the package ships only the CF rules): "
            f"pass --data DIR or set {DATA_ENV}, or run `codefusion download`"
        )
    p = builtin_data_dir()
    if p not in _said:
        _said.add(p)
        log.warning(
            "no data folder given: using the CF rules built into the package (CC BY-SA 4.0; "
            "--data DIR, %s or `codefusion download` for all three benchmarks)",
            DATA_ENV,
        )
    return p


def check_language(lang: str) -> str:
    try:
        return language(lang).name
    except UnknownLanguage as e:
        raise DataError(str(e)) from None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def _clean_text(value: Any) -> str | None:
    """Text field or None; non-strings (numbers, lists) are treated as absent."""
    if not isinstance(value, str):
        return None
    # Drop NUL and other C0 controls except tab/newline: they come from garbled rows.
    text = "".join(ch for ch in value if ch in "\t\n" or ord(ch) >= 32)
    return text.strip()


def _row_problem(row: Any, lang: str) -> str | None:
    """Why a training row is unusable, or None if it is fine."""
    if not isinstance(row, dict):
        return "non-object row"
    prompt, code = _clean_text(row.get("NL Utterance")), _clean_text(row.get("Code"))
    if not prompt:
        return "null or empty prompt"
    if not code:
        return "empty code"
    if language(lang).train_gold_must_parse and not language(lang).parses(code):
        return f"unparseable {lang} gold"
    return None


def load_benchmark(
    lang: str, split: str, data_dir: str | os.PathLike | None = None
) -> tuple[list[Example], LoadReport]:
    """Read one split of a benchmark under the module's row policy."""
    check_language(lang)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose train or test")
    path = resolve_data_dir(data_dir, lang) / "benchmarks" / language(lang).benchmark_file
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get(split), list):
        raise DataError(f'{path}: expected an object with a "{split}" list of records')
    examples, report = [], LoadReport()
    for i, row in enumerate(doc[split]):
        if split == "train":
            problem = _row_problem(row, lang)
            if problem:
                report.skipped[problem] += 1
                continue
        elif not isinstance(row, dict):
            raise DataError(f"{path}: {split} record {i} is not an object")
        data = row.get("Data") if isinstance(row.get("Data"), list) else None
        labels = row.get("Labels") if isinstance(row.get("Labels"), list) else None
        examples.append(
            Example(
                id=row.get("ID", i),
                prompt=_clean_text(row.get("NL Utterance")) or "",
                code=_clean_text(row.get("Code")) or "",
                data=data,
                labels=labels,
            )
        )
    report.kept = len(examples)
    if report.skipped:
        log.info("%s %s: %s", lang, split, report)
    return examples, report


def load_nl2bash_defined(path: str | os.PathLike) -> frozenset[int | str]:
    """IDs of the Bash test items whose gold command NL2Bash's official evaluation can template
    and scores as matching itself (``{"ids": [...], ...}``, shipped in the data folder as
    ``nl2bash-official-defined.json``). On the other items that evaluation scores no
    prediction as correct, so under it a perfect model scores ``len(ids) / 2522``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"{p}: file not found (the list of Bash test items NL2Bash's evaluation can score "
            f"ships in the data folder as {NL2BASH_DEFINED})"
        )
    doc = _read_json(p)
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not all(
        isinstance(i, (int, str)) and not isinstance(i, bool) for i in ids
    ):
        raise DataError(f'{p}: expected an object with an "ids" list of test item IDs')
    return frozenset(ids)


def iter_snippet_file(path: Path) -> Iterator[str]:
    """Non-empty lines of a snippet file, stripped."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            line = _clean_text(line)
            if line:
                yield line


def load_snippets(
    lang: str,
    data_dir: str | os.PathLike | None = None,
    python_corpus: str | os.PathLike | None = None,
) -> list[str]:
    """Pre-training snippets of a language, in file order (duplicates kept, as in the files).

    The published data has no Python snippet file: pass ``python_corpus`` (built by
    ``codefusion build-python-corpus``), or it is built from the standard library on the fly.
    """
    name = language(check_language(lang)).snippet_file
    if name is None:
        if python_corpus:
            return list(iter_snippet_file(Path(python_corpus)))
        from codefusion.pycorpus import build_python_corpus

        return build_python_corpus()
    return list(iter_snippet_file(resolve_data_dir(data_dir, lang) / "pretraining" / name))


def split_holdout(
    items: list, fraction: float, seed: int, key: Callable[[Any], Hashable] | None = None
) -> tuple[list, list]:
    """A deterministic (train, val) split; val has at least one item when fraction > 0.

    With ``key``, items of equal key go to the same side (whole groups are held out, in a
    seeded order, until ``fraction`` of the items is reached): a held-out program is then never
    trained on under another prompt."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    groups: dict[Hashable, list[int]] = {}
    for i, x in enumerate(items):
        groups.setdefault(i if key is None else key(x), []).append(i)
    order = list(groups)
    random.Random(seed).shuffle(order)
    n_val, val = max(1, int(len(items) * fraction)), set()
    for g in order:
        if len(val) >= n_val:
            break
        # A group that would overshoot the share (CF: "Duplicate()" under 50 prompts) is kept
        # for training, unless nothing is held out yet.
        if val and len(val) + len(groups[g]) > n_val * 1.25:
            continue
        if len(val) + len(groups[g]) < len(items):
            val.update(groups[g])
    return [x for i, x in enumerate(items) if i not in val], [items[i] for i in sorted(val)]


def holdout_examples(
    examples: list[Example], fraction: float, seed: int, lang: str
) -> tuple[list[Example], list[Example]]:
    """The fine-tuning (train, held-out) split of a benchmark's train examples: whole programs
    (the language's program key) are held out, since CF's train split has near-duplicates and
    a random share of rows would not be independent of training."""
    key = language(lang).program_key
    return split_holdout(examples, fraction, seed, lambda e: key(e.code))
